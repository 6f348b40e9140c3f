// Builds a JavaScript hook into a WebAssembly component with componentize-js's API (the
// `jco componentize` CLI fails on Node 20 with "failed to get path metadata").
// Usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, rename } from 'node:fs/promises';
import { resolve } from 'node:path';

const [source, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR WORLD OUT.wasm');
  process.exit(2);
}
const { component } = await componentize({
  sourcePath: resolve(source),
  witPath: resolve(witPath),
  worldName,
  // ccx hosts give hooks WASI preview 2 without wasi:http.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(`${out}.tmp`, component);
await rename(`${out}.tmp`, out);

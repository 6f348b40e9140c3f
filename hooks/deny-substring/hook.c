// deny-substring: a ccx pre-hook in C. Denies a command line containing any of the
// substrings in its `deny` config (separated by newlines; default `rm -rf /`).
//
// It shows the C route to a component: `wit-bindgen c` generates pre_hook.{h,c} and
// pre_hook_component_type.o from wit/hooks.wit, `zig cc -target wasm32-wasi
// -mexec-model=reactor` compiles a WASI 0.1 reactor module, and `jco new --wasi-reactor`
// adapts it into a WASI 0.2 component (hooks/build.sh deny-substring does all three).
//
// Ownership follows wit-bindgen's C conventions: the exported function owns `request` and
// frees it; what it puts in `ret` is freed by the generated post-return function; lists
// returned by imports belong to the caller.
#include <stdio.h>
#include <string.h>

#include "pre_hook.h"

static int contains(const pre_hook_string_t *hay, const uint8_t *needle, size_t n) {
  if (n == 0 || hay->len < n) return 0;
  for (size_t i = 0; i + n <= hay->len; i++) {
    if (memcmp(hay->ptr + i, needle, n) == 0) return 1;
  }
  return 0;
}

static int is_key(const pre_hook_string_t *s, const char *key) {
  return s->len == strlen(key) && memcmp(s->ptr, key, s->len) == 0;
}

// Denies with "command contains `NEEDLE`" when `line` (one needle) is in the command.
static int check(const pre_hook_string_t *command, const uint8_t *line, size_t n,
                 pre_hook_pre_decision_t *ret) {
  if (!contains(command, line, n)) return 0;
  char reason[512];
  snprintf(reason, sizeof reason, "command contains `%.*s`", (int)(n > 400 ? 400 : n),
           (const char *)line);
  ret->tag = CCX_HOOKS_TYPES_PRE_DECISION_DENY;
  pre_hook_string_dup(&ret->val.deny, reason);
  return 1;
}

void exports_pre_hook_pre_execute(pre_hook_exec_request_t *request, pre_hook_pre_decision_t *ret) {
  static const char fallback[] = "rm -rf /";
  pre_hook_list_tuple2_string_string_t config;
  ccx_hooks_host_config(&config);
  const pre_hook_string_t *deny = NULL;
  for (size_t i = 0; i < config.len; i++) {
    if (is_key(&config.ptr[i].f0, "deny")) deny = &config.ptr[i].f1;
  }
  ret->tag = CCX_HOOKS_TYPES_PRE_DECISION_ALLOW;
  if (deny == NULL) {
    check(&request->command, (const uint8_t *)fallback, strlen(fallback), ret);
  } else {
    size_t start = 0;
    for (size_t i = 0; i <= deny->len; i++) {
      if (i == deny->len || deny->ptr[i] == '\n') {
        if (check(&request->command, deny->ptr + start, i - start, ret)) break;
        start = i + 1;
      }
    }
  }
  pre_hook_list_tuple2_string_string_free(&config);
  pre_hook_exec_request_free(request);
}

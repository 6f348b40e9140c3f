// The ccx dashboard: plain JavaScript (ES2020), no framework, nothing loaded from elsewhere.
//
// Where its data comes from (all with the token, which it takes from `?token=` once, keeps in
// sessionStorage and removes from the address bar):
// - jobs: `list_jobs` over a WebSocket to `/ws`, every second (the protocol has no server-wide
//   job events): running, paused and queued jobs, and the newest ended ones;
// - a job's output: `get_job`, then `attach` on a second WebSocket of its own, which streams
//   the job's output from its start and then live, to its `process.completed`;
// - hooks and reload state: `GET /hooks`; the server line: `GET /health` (every 3 s).
//
// Everything shown is put into the page with `textContent` or text nodes, never as HTML.
'use strict';

(() => {
  const TOKEN_KEY = 'ccx.token';
  const JOBS_EVERY_MS = 1000;
  const STATUS_EVERY_MS = 3000;
  const ACTIVE_LIMIT = 500;
  const RECENT_LIMIT = 100;
  const RECENT_SHOWN = 30;
  /** Characters of output kept in the page; older output is dropped from the top. */
  const OUTPUT_MAX_CHARS = 500000;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children; strings become text nodes, never markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  // ---- formatting ------------------------------------------------------------------------

  function fmtBytes(n) {
    if (n === undefined || n === null) return '–';
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i += 1;
    } while (v >= 1024 && i < units.length - 1);
    return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
  }

  function fmtSeconds(s) {
    if (s === undefined || s === null || !isFinite(s)) return '–';
    if (s < 0) s = 0;
    if (s < 0.001) return s > 0 ? '<1 ms' : '0 ms';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${String(m % 60).padStart(2, '0')} m`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function fmtMicros(us) {
    if (us === undefined || us === null) return '–';
    if (us < 1000) return `${us} µs`;
    if (us < 1000000) return `${(us / 1000).toFixed(us < 10000 ? 2 : 1)} ms`;
    return `${(us / 1000000).toFixed(2)} s`;
  }

  /** The server's clock now, in seconds since the epoch (see `noteServerClock`). */
  function serverNow() {
    return (Date.now() + st.skewMs) / 1000;
  }

  function fmtAgo(epoch) {
    if (!epoch) return '–';
    return `${fmtSeconds(serverNow() - epoch)} ago`;
  }

  function fmtTime(epoch) {
    return epoch ? new Date(epoch * 1000).toLocaleString() : '';
  }

  function shortId(id) {
    // UUIDv7: the first characters are a timestamp shared by jobs of the same moment; the
    // last ones are random, so they tell jobs apart.
    return id && id.length > 12 ? `…${id.slice(-12)}` : id;
  }

  function stateBadge(status) {
    return el('span', { class: `state state-${status}` }, status.replace('_', ' '));
  }

  // ---- state -------------------------------------------------------------------------------

  const st = {
    token: '',
    stopped: false,
    rpc: null,
    backoff: BACKOFF_MIN_MS,
    retryAt: 0,
    retryWhy: '',
    retryTimer: null,
    jobsTimer: null,
    statusTimer: null,
    skewMs: 0,
    active: [],
    recent: [],
    jobsNote: '',
    follow: null,
  };

  function storage() {
    try {
      return window.sessionStorage;
    } catch (_) {
      return null;
    }
  }

  /** Moves `?token=` from the address bar into sessionStorage; returns the token in force. */
  function takeToken() {
    const url = new URL(location.href);
    const s = storage();
    if (url.searchParams.has('token')) {
      const t = url.searchParams.get('token') || '';
      if (s) s.setItem(TOKEN_KEY, t);
      else st.token = t;
      url.searchParams.delete('token');
      history.replaceState(null, '', url.pathname + url.search + url.hash);
    }
    return (s && s.getItem(TOKEN_KEY)) || st.token || '';
  }

  function setFollowParam(jobId) {
    const url = new URL(location.href);
    if (jobId) url.searchParams.set('follow', jobId);
    else url.searchParams.delete('follow');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
  }

  // ---- HTTP --------------------------------------------------------------------------------

  class AuthError extends Error {
    constructor(status, why) {
      super(why);
      this.status = status;
    }
  }

  /** Uses the `Date` header to follow the server's clock when it differs from ours by more
   * than its one-second resolution (job times are the server's). */
  function noteServerClock(resp) {
    const date = Date.parse(resp.headers.get('Date') || '');
    if (!isFinite(date)) return;
    const skew = date - Date.now();
    st.skewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  async function getJson(path) {
    const headers = st.token ? { Authorization: `Bearer ${st.token}` } : {};
    const resp = await fetch(new URL(path, location.href), {
      headers,
      cache: 'no-store',
      credentials: 'omit',
    });
    noteServerClock(resp);
    if (resp.status === 401 || resp.status === 403) {
      let why = '';
      try {
        why = (await resp.json()).error || '';
      } catch (_) {
        // Not JSON: the status says enough.
      }
      throw new AuthError(resp.status, why);
    }
    if (!resp.ok) throw new Error(`GET /${path}: HTTP ${resp.status}`);
    return resp.json();
  }

  // ---- WebSocket JSON-RPC ------------------------------------------------------------------

  function wsUrl() {
    const u = new URL('ws', location.href);
    u.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    u.search = '';
    u.hash = '';
    if (st.token) u.searchParams.set('token', st.token);
    return u.toString();
  }

  class RpcError extends Error {
    constructor(err) {
      super(err && err.message ? err.message : 'error');
      this.code = err && err.code;
      this.data = err && err.data;
    }
  }

  /** One WebSocket session: `open(hello)` once greeted, `note(method, params)` for each
   * notification, `close(event)` at its end (not after `close()`). */
  class Rpc {
    constructor(handlers) {
      this.handlers = handlers;
      this.nextId = 1;
      this.pending = new Map();
      this.ready = false;
      this.ws = new WebSocket(wsUrl());
      this.ws.onmessage = (ev) => this.receive(ev.data);
      this.ws.onerror = () => {};
      this.ws.onclose = (ev) => {
        this.ready = false;
        for (const p of this.pending.values()) p.reject(new Error('connection closed'));
        this.pending.clear();
        if (this.handlers.close) this.handlers.close(ev);
      };
    }

    receive(text) {
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (_) {
        return;
      }
      if (msg.method === 'connected') {
        this.ready = true;
        if (this.handlers.open) this.handlers.open(msg.params || {});
      } else if (msg.method) {
        if (this.handlers.note) this.handlers.note(msg.method, msg.params || {});
      } else {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new RpcError(msg.error));
        else p.resolve(msg.result);
      }
    }

    call(method, params) {
      return new Promise((resolve, reject) => {
        if (!this.ready) {
          reject(new Error('not connected'));
          return;
        }
        const id = this.nextId;
        this.nextId += 1;
        this.pending.set(id, { resolve, reject });
        this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
      });
    }

    close() {
      this.handlers = {};
      try {
        this.ws.close(1000);
      } catch (_) {
        // Already closed.
      }
    }
  }

  // ---- connection and errors ---------------------------------------------------------------

  function setConn(kind, text) {
    const c = $('conn');
    c.className = `pill pill-${kind}`;
    c.textContent = text;
  }

  function showBanner(text) {
    const b = $('banner');
    b.textContent = text;
    b.hidden = false;
  }

  function hideBanner() {
    $('banner').hidden = true;
  }

  function authFailed(err) {
    st.stopped = true;
    clearTimeout(st.retryTimer);
    clearTimeout(st.jobsTimer);
    clearTimeout(st.statusTimer);
    if (st.rpc) st.rpc.close();
    st.rpc = null;
    unfollow(false);
    const why = err.message ? `: ${err.message}` : '';
    if (err.status === 401) {
      setConn('bad', 'token refused');
      showBanner(
        `The server refused the token (HTTP 401${why}). Open this page as ` +
          '/ui?token=YOUR_TOKEN, or enter the token below.'
      );
      $('token-form').hidden = false;
    } else {
      setConn('bad', 'origin refused');
      showBanner(
        `The server refused this page's origin (HTTP 403${why}). Open the page at the ` +
          "server's own address, or add this origin to server.allowed_origins."
      );
    }
  }

  function connect() {
    if (st.stopped) return;
    setConn('wait', 'connecting…');
    const rpc = new Rpc({
      open: () => {
        st.backoff = BACKOFF_MIN_MS;
        setConn('ok', 'connected');
        hideBanner();
        pollJobs();
      },
      close: (ev) => onClose(rpc, ev),
    });
    st.rpc = rpc;
  }

  async function onClose(rpc, ev) {
    if (st.rpc !== rpc) return;
    st.rpc = null;
    clearTimeout(st.jobsTimer);
    if (st.stopped) return;
    // A refused upgrade (401, 403) looks like any other close to a page: ask over HTTP why.
    try {
      await getJson('health');
    } catch (e) {
      if (e instanceof AuthError) {
        authFailed(e);
        return;
      }
    }
    let why = 'connection lost';
    if (ev.code === 1013) why = 'session limit reached';
    else if (ev.code === 1001) why = 'server stopping';
    else if (ev.code === 1009) why = 'message too big';
    const delay = st.backoff * (0.75 + Math.random() * 0.5);
    st.backoff = Math.min(st.backoff * 2, BACKOFF_MAX_MS);
    st.retryAt = Date.now() + delay;
    st.retryWhy = why;
    showRetry();
    clearTimeout(st.retryTimer);
    st.retryTimer = setTimeout(connect, delay);
  }

  function showRetry() {
    if (st.rpc || st.stopped || !st.retryAt) return;
    const left = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
    setConn('bad', `disconnected (${st.retryWhy}), retrying in ${left} s`);
  }

  // ---- jobs --------------------------------------------------------------------------------

  async function pollJobs() {
    clearTimeout(st.jobsTimer);
    const rpc = st.rpc;
    if (!rpc || !rpc.ready) return;
    try {
      const lists = await Promise.all([
        rpc.call('list_jobs', { status: 'running', limit: ACTIVE_LIMIT }),
        rpc.call('list_jobs', { status: 'paused', limit: ACTIVE_LIMIT }),
        rpc.call('list_jobs', { status: 'queued', limit: ACTIVE_LIMIT }),
        rpc.call('list_jobs', { limit: RECENT_LIMIT }),
      ]);
      const [running, paused, queued, newest] = lists.map((l) => l.jobs || []);
      const byStart = (a, b) => (b.started_at || 0) - (a.started_at || 0);
      st.active = [
        ...running.concat(paused).sort(byStart),
        // Queued jobs in the order they will run.
        ...queued.sort((a, b) => a.created_at - b.created_at),
      ];
      const live = new Set(st.active.map((j) => j.job_id));
      st.recent = newest.filter((j) => !live.has(j.job_id) && j.ended_at).slice(0, RECENT_SHOWN);
      st.jobsNote = '';
    } catch (e) {
      if (e instanceof RpcError && e.code === -32008) {
        st.jobsNote = `Jobs cannot be listed: ${e.message}`;
        st.active = [];
        st.recent = [];
      } else if (!(e instanceof RpcError)) {
        return; // The connection closed; `onClose` takes over.
      } else {
        st.jobsNote = `list_jobs failed: ${e.message}`;
      }
    }
    renderJobs();
    if (st.rpc === rpc) st.jobsTimer = setTimeout(pollJobs, JOBS_EVERY_MS);
  }

  function jobLink(id, pid) {
    const title = pid ? `${id}\npid ${pid}` : id;
    const a = el('a', { href: `?follow=${encodeURIComponent(id)}`, class: 'mono job-link', title }, shortId(id));
    a.addEventListener('click', (ev) => {
      ev.preventDefault();
      follow(id);
    });
    return a;
  }

  function commandCell(j) {
    const ran = j.command_run && j.command_run !== j.command ? j.command_run : null;
    return el(
      'td',
      { class: 'mono command', title: ran ? `${j.command}\nas run: ${ran}` : j.command },
      j.command,
      ran ? el('span', { class: 'tag' }, 'modified') : null
    );
  }

  /** Running time against the job's timeout (time spent paused counts here, not there). */
  function progressOf(j) {
    if (!j.started_at) return null;
    const end = j.ended_at || serverNow();
    const elapsed = Math.max(0, end - j.started_at);
    const timeout = j.timeout || 0;
    return { elapsed, timeout, frac: timeout > 0 ? Math.min(1, elapsed / timeout) : null };
  }

  function progressCell(j) {
    const td = el('td', { class: 'progress-cell' });
    if (j.status === 'queued') {
      td.append(el('span', { class: 'muted' }, `waiting ${fmtSeconds(serverNow() - j.created_at)}`));
      return td;
    }
    const p = progressOf(j);
    if (!p) return td;
    if (p.frac !== null) {
      const bar = el('progress', { max: 1000, value: Math.round(p.frac * 1000) });
      if (p.frac > 0.9) bar.className = 'late';
      td.append(bar);
    }
    const text = p.timeout
      ? `${fmtSeconds(p.elapsed)} of ${fmtSeconds(p.timeout)}`
      : fmtSeconds(p.elapsed);
    td.append(el('span', { class: 'progress-text' }, text));
    return td;
  }

  function flags(j) {
    const td = el('td', { class: 'flags' });
    if (j.detached) td.append(el('span', { class: 'tag tag-detached' }, 'detached'));
    if (j.pty) td.append(el('span', { class: 'tag' }, 'pty'));
    if (j.token_label && j.token_label !== 'default') {
      td.append(el('span', { class: 'tag', title: 'the label of the token that started it' }, j.token_label));
    }
    return td;
  }

  function result(j) {
    const sig = j.signal ? `signal ${j.signal}` : '';
    let text;
    let title = j.error || '';
    switch (j.status) {
      case 'completed':
        text = `exit ${j.exit_code ?? 0}`;
        break;
      case 'failed':
        if (j.limit) text = `${j.limit} limit`;
        else if (j.exit_code !== null && j.exit_code !== undefined) text = `exit ${j.exit_code}`;
        else text = sig || j.error || 'failed';
        break;
      case 'denied':
        text = `denied by ${j.denied_by || 'a hook'}`;
        title = j.denied_reason || '';
        break;
      case 'timed_out':
        text = 'timed out';
        break;
      default:
        text = sig || j.status.replace('_', ' ');
    }
    const td = el('td', { class: 'result', title: title || null }, text);
    if (j.status === 'denied' && j.denied_reason) {
      td.append(el('div', { class: 'muted small' }, j.denied_reason));
    } else if (j.error && text !== j.error) {
      td.append(el('div', { class: 'muted small' }, j.error));
    }
    return td;
  }

  function selectedClass(j) {
    return st.follow && st.follow.id === j.job_id ? ' selected' : '';
  }

  function activeRow(j) {
    return el(
      'tr',
      { class: `job${selectedClass(j)}`, 'data-job-id': j.job_id, 'data-status': j.status },
      el('td', {}, stateBadge(j.status)),
      el('td', {}, jobLink(j.job_id, j.pid)),
      commandCell(j),
      progressCell(j),
      el(
        'td',
        { class: 'when', title: fmtTime(j.started_at || j.created_at) },
        j.started_at ? fmtAgo(j.started_at) : '–'
      ),
      flags(j)
    );
  }

  function recentRow(j) {
    // A job that never started (denied, refused while queued) took nothing.
    let took = null;
    if (j.started_at) took = j.execution_time ?? (j.ended_at ? j.ended_at - j.started_at : null);
    const out = (j.stdout_bytes || 0) + (j.stderr_bytes || 0);
    return el(
      'tr',
      { class: `job${selectedClass(j)}`, 'data-job-id': j.job_id, 'data-status': j.status },
      el('td', {}, stateBadge(j.status), j.detached ? el('span', { class: 'tag tag-detached' }, 'detached') : null),
      el('td', {}, jobLink(j.job_id, j.pid)),
      commandCell(j),
      result(j),
      el('td', { class: 'num' }, took === null ? '–' : fmtSeconds(took)),
      el(
        'td',
        { class: 'num', title: `stdout ${fmtBytes(j.stdout_bytes)}, stderr ${fmtBytes(j.stderr_bytes)}` },
        fmtBytes(out)
      ),
      el('td', { class: 'when', title: fmtTime(j.ended_at) }, fmtAgo(j.ended_at))
    );
  }

  function renderJobs() {
    const count = (pred) => st.active.filter(pred).length;
    const chips = [
      ['running', count((j) => j.status === 'running' || j.status === 'paused')],
      ['queued', count((j) => j.status === 'queued')],
      ['detached', count((j) => j.detached)],
      ['recent', st.recent.length],
    ];
    $('job-counts').replaceChildren(
      ...chips.map(([name, n]) =>
        el('span', { class: `count count-${name}`, 'data-count': name }, el('b', {}, String(n)), ` ${name}`)
      )
    );
    const note = $('jobs-note');
    note.textContent = st.jobsNote;
    note.hidden = !st.jobsNote;
    $('active-jobs').tBodies[0].replaceChildren(...st.active.map(activeRow));
    $('active-empty').hidden = st.active.length > 0;
    $('recent-jobs').tBodies[0].replaceChildren(...st.recent.map(recentRow));
    $('recent-empty').hidden = st.recent.length > 0;
    if (st.follow) {
      const rec = st.active.concat(st.recent).find((j) => j.job_id === st.follow.id);
      if (rec && !st.follow.ended) st.follow.rec = rec;
      renderFollowMeta();
    }
  }

  // ---- one job's output ----------------------------------------------------------------------

  function unfollow(clearParam) {
    const f = st.follow;
    if (f) {
      clearTimeout(f.flushTimer);
      clearTimeout(f.retryTimer);
      if (f.rpc) f.rpc.close();
    }
    st.follow = null;
    if (clearParam) setFollowParam(null);
    $('output').replaceChildren();
    $('follow-id').textContent = '';
    $('follow-meta').replaceChildren();
    $('follow-close').hidden = true;
    $('follow-empty').hidden = false;
    $('output').hidden = true;
  }

  function follow(jobId) {
    unfollow(false);
    setFollowParam(jobId);
    const f = {
      id: jobId,
      rec: null,
      started: null,
      status: 'attaching',
      done: null,
      ended: false,
      error: '',
      notes: [],
      bytes: { stdout: 0, stderr: 0, pty: 0 },
      lastSeq: 0,
      chars: 0,
      trimmed: 0,
      pending: [],
      flushTimer: null,
      retryTimer: null,
      decoders: {},
      rpc: null,
    };
    st.follow = f;
    $('follow-id').textContent = jobId;
    $('follow-close').hidden = false;
    $('follow-empty').hidden = true;
    $('output').hidden = false;
    renderJobs();
    attach(f);
  }

  /** A session of its own, so that following another job ends this replay (the protocol has
   * no call that stops an `attach`). After a lost connection it resumes after `lastSeq`. */
  function attach(f) {
    if (st.stopped || st.follow !== f) return;
    const rpc = new Rpc({
      open: async () => {
        try {
          if (!f.rec) f.rec = await rpc.call('get_job', { job_id: f.id });
          const params = { job_id: f.id };
          if (f.lastSeq > 0) params.after_seq = f.lastSeq;
          const r = await rpc.call('attach', params);
          if (!f.done) f.status = r.status;
        } catch (e) {
          if (e instanceof RpcError) {
            f.error = e.code === -32002 ? `No such job: ${f.id}` : e.message;
            f.ended = true;
            rpc.close();
          }
        }
        renderFollowMeta();
      },
      note: (method, p) => {
        if (p.job_id === f.id) onJobEvent(f, method, p);
      },
      close: () => {
        if (st.follow !== f || f.ended || st.stopped) return;
        f.rpc = null;
        f.status = 'reconnecting';
        renderFollowMeta();
        f.retryTimer = setTimeout(() => attach(f), 2000);
      },
    });
    f.rpc = rpc;
  }

  function onJobEvent(f, method, p) {
    switch (method) {
      case 'process.started':
        f.started = p;
        f.status = 'running';
        break;
      case 'process.output':
        addOutput(f, p);
        break;
      case 'process.output_gap':
        f.lastSeq = Math.max(f.lastSeq, p.next_seq - 1);
        queueText(f, 'note', `\n[${fmtBytes(p.bytes)} of output not kept]\n`);
        break;
      case 'process.paused':
        f.status = 'paused';
        break;
      case 'process.resumed':
        f.status = 'running';
        break;
      case 'process.canceled':
        f.status = 'canceling';
        break;
      case 'hook.warning':
        f.notes.push(`hook ${p.hook} (${p.stage}) ${p.kind}: ${p.message}`);
        break;
      case 'process.completed':
        f.done = p;
        f.status = p.status;
        f.ended = true;
        flushOutput(f);
        if (f.rpc) f.rpc.close();
        f.rpc = null;
        break;
      default:
        return;
    }
    renderFollowMeta();
  }

  function decodeBase64(data) {
    const bin = atob(data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i += 1) bytes[i] = bin.charCodeAt(i);
    return bytes;
  }

  const encoder = new TextEncoder();

  function addOutput(f, p) {
    const stream = p.type === 'stderr' ? 'stderr' : p.type === 'pty' ? 'pty' : 'stdout';
    let text;
    let n;
    if (p.encoding === 'base64') {
      const bytes = decodeBase64(p.data);
      if (!f.decoders[stream]) f.decoders[stream] = new TextDecoder('utf-8');
      text = f.decoders[stream].decode(bytes, { stream: true });
      n = bytes.length;
    } else {
      text = p.data;
      n = encoder.encode(p.data).length;
    }
    f.bytes[stream] = Math.max(f.bytes[stream], (p.offset || 0) + n);
    f.lastSeq = Math.max(f.lastSeq, p.seq || 0);
    queueText(f, stream, cleanTerminalText(text));
  }

  // Colour and cursor sequences of programs that think they write to a terminal.
  // eslint-disable-next-line no-control-regex
  const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

  function cleanTerminalText(text) {
    return text.replace(ANSI, '').replace(/\r\n/g, '\n').replace(/\r/g, '');
  }

  function queueText(f, stream, text) {
    if (!text) return;
    f.pending.push([stream, text]);
    if (!f.flushTimer) f.flushTimer = setTimeout(() => flushOutput(f), 50);
  }

  /** Writes the queued output in one go (a span per run of one stream), then keeps the page's
   * copy under OUTPUT_MAX_CHARS by dropping the oldest spans. */
  function flushOutput(f) {
    clearTimeout(f.flushTimer);
    f.flushTimer = null;
    if (st.follow !== f || f.pending.length === 0) return;
    const out = $('output');
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 8;
    const frag = document.createDocumentFragment();
    let last = out.lastChild;
    for (const [stream, text] of f.pending) {
      f.chars += text.length;
      if (last && last.dataset.stream === stream && last.textContent.length < 8192) {
        last.append(text);
      } else {
        last = el('span', { class: `out-${stream}`, 'data-stream': stream }, text);
        frag.append(last);
      }
    }
    f.pending = [];
    out.append(frag);
    while (f.chars > OUTPUT_MAX_CHARS && out.firstChild && out.firstChild !== out.lastChild) {
      const n = out.firstChild.textContent.length;
      f.chars -= n;
      f.trimmed += n;
      out.firstChild.remove();
    }
    if (atBottom) out.scrollTop = out.scrollHeight;
    renderFollowMeta();
  }

  function renderFollowMeta() {
    const f = st.follow;
    if (!f) return;
    const rec = f.rec || {};
    const status = f.done ? f.done.status : rec.status && !f.started ? rec.status : f.status;
    const parts = [];
    parts.push(el('div', { class: 'meta-line' }, stateBadge(status), ' ', el('span', { class: 'mono command-full' }, (f.started && f.started.command) || rec.command || '')));
    const line = el('div', { class: 'meta-line muted' });
    if (f.done) {
      const d = f.done;
      const how = d.exit_code !== null && d.exit_code !== undefined ? `exit ${d.exit_code}` : d.signal ? `signal ${d.signal}` : d.status;
      line.append(`${how} after ${fmtSeconds(d.execution_time)}`);
      if (d.error) line.append(` · ${d.error}`);
      if (d.reason) line.append(` · ${d.hook}: ${d.reason}`);
    } else {
      const startedAt = rec.started_at;
      const timeout = (f.started && f.started.timeout) || rec.timeout;
      if (startedAt && (status === 'running' || status === 'paused' || status === 'canceling')) {
        const elapsed = serverNow() - startedAt;
        if (timeout) {
          const frac = Math.min(1, elapsed / timeout);
          const bar = el('progress', { max: 1000, value: Math.round(frac * 1000) });
          if (frac > 0.9) bar.className = 'late';
          line.append(bar, ` ${fmtSeconds(elapsed)} of ${fmtSeconds(timeout)} timeout`);
        } else {
          line.append(`${fmtSeconds(elapsed)} running`);
        }
      }
    }
    const b = f.done
      ? { stdout: f.done.stdout_bytes, stderr: f.done.stderr_bytes }
      : { stdout: f.bytes.stdout + f.bytes.pty, stderr: f.bytes.stderr };
    line.append(
      el('span', { class: 'bytes' }, ` · stdout ${fmtBytes(b.stdout)} · stderr ${fmtBytes(b.stderr)}`)
    );
    if (f.trimmed) line.append(` · earlier ${fmtBytes(f.trimmed)} of text not shown`);
    parts.push(line);
    if (f.error) parts.push(el('div', { class: 'note note-error' }, f.error));
    for (const n of f.notes.slice(-3)) parts.push(el('div', { class: 'note note-warn' }, n));
    $('follow-meta').replaceChildren(...parts);
  }

  // ---- hooks and server ----------------------------------------------------------------------

  async function pollStatus() {
    clearTimeout(st.statusTimer);
    if (st.stopped) return;
    try {
      const [health, hooks] = await Promise.all([getJson('health'), getJson('hooks')]);
      renderHealth(health);
      renderHooks(hooks);
    } catch (e) {
      if (e instanceof AuthError) {
        authFailed(e);
        return;
      }
      // Unreachable: the WebSocket's close says so; keep the last state on screen.
    }
    st.statusTimer = setTimeout(pollStatus, STATUS_EVERY_MS);
  }

  function renderHealth(h) {
    const bits = [
      el('span', { class: `pill pill-${h.status === 'healthy' ? 'ok' : 'warn'}`, 'data-health': h.status }, h.status),
      ` v${h.version} · up ${fmtSeconds(h.uptime_seconds)} · ${h.active_sessions}/${h.max_sessions} sessions · ${h.running_jobs} running`,
    ];
    if (h.containment && h.containment.mode) bits.push(` · ${h.containment.mode}`);
    if (h.state && h.state.error) bits.push(el('span', { class: 'warn-text' }, ` · registry: ${h.state.error}`));
    $('server-info').replaceChildren(...bits);
  }

  function hookRow(h) {
    const s = h.stats || {};
    const f = s.failures || {};
    const failKinds = Object.entries(f).filter(([, n]) => n > 0);
    const failures = failKinds.reduce((sum, [, n]) => sum + n, 0);
    const decisions = [];
    for (const k of ['allow', 'deny', 'modify', 'would_deny', 'would_modify', 'pass', 'fail']) {
      if (s[k]) decisions.push(`${k.replace('_', ' ')} ${s[k]}`);
    }
    let lastError = '';
    let lastTitle = '';
    if (h.state === 'failed') {
      lastError = h.error || 'failed to load';
    } else if (s.last_failure) {
      const lf = s.last_failure;
      lastError = `${lf.kind} (${lf.stage}): ${lf.message}`;
      lastTitle = lf.at_unix ? `${fmtTime(lf.at_unix)}, ${fmtAgo(lf.at_unix)}` : '';
    }
    const stages = (h.stages || []).join(', ');
    const limits = h.fuel !== undefined ? `fuel ${h.fuel}, ${h.timeout_ms} ms, ${h.memory_mb} MiB, on failure: ${h.on_failure}` : '';
    return el(
      'tr',
      { class: 'hook', 'data-hook': h.name, 'data-state': h.state },
      el('td', { class: 'mono', title: `${h.path || ''}${limits ? `\n${limits}` : ''}` }, h.name),
      el('td', {}, stateBadge(h.state || 'loading')),
      el('td', {}, stages || '–'),
      el('td', { class: 'num calls' }, s.calls ?? '–'),
      el('td', { class: 'small' }, decisions.join(' · ') || '–'),
      el('td', { class: 'num p50' }, fmtMicros(s.latency_p50_us)),
      el('td', { class: 'num p99' }, fmtMicros(s.latency_p99_us)),
      el(
        'td',
        { class: `num failures${failures ? ' warn-text' : ''}`, title: failKinds.map(([k, n]) => `${k} ${n}`).join(', ') || null },
        String(failures)
      ),
      el('td', { class: `last-error${lastError ? ' warn-text' : ' muted'}`, title: lastTitle || null }, lastError || 'none')
    );
  }

  function renderHooks(rep) {
    const chips = [
      el('span', { class: `count${rep.state === 'ready' ? '' : ' warn-text'}`, 'data-reload': 'state' }, `hooks ${rep.state || '?'}`),
      el('span', { class: 'count', 'data-reload': 'generation' }, `generation ${rep.generation}`),
    ];
    if (rep.loaded_at) {
      chips.push(el('span', { class: 'count', title: fmtTime(rep.loaded_at) }, `loaded ${fmtAgo(rep.loaded_at)}`));
    }
    chips.push(
      el('span', { class: `count${rep.reload_error ? ' warn-text' : ''}`, 'data-reload': 'last' }, rep.reload_error ? 'last reload refused' : 'last reload ok')
    );
    $('reload-state').replaceChildren(...chips);
    const err = $('reload-error');
    err.textContent = rep.reload_error ? `Reload refused, the previous generation stays in force: ${rep.reload_error}` : '';
    err.hidden = !rep.reload_error;
    const rr = rep.restart_required || [];
    const restart = $('restart-required');
    restart.textContent = rr.length ? `Changed in the config file, applied after a restart: ${rr.join(', ')}` : '';
    restart.hidden = rr.length === 0;
    const hooks = rep.hooks || [];
    $('hooks-table').tBodies[0].replaceChildren(...hooks.map(hookRow));
    $('hooks-empty').hidden = hooks.length > 0;
  }

  // ---- start -------------------------------------------------------------------------------

  async function start() {
    st.stopped = false;
    st.token = takeToken();
    hideBanner();
    $('token-form').hidden = true;
    setConn('wait', 'connecting…');
    try {
      // Asked first: a wrong token shows as a 401 here; a WebSocket's refusal does not.
      await getJson('health');
    } catch (e) {
      if (e instanceof AuthError) {
        authFailed(e);
        return;
      }
    }
    connect();
    pollStatus();
    const want = new URL(location.href).searchParams.get('follow');
    if (want) follow(want);
    else unfollow(false);
  }

  function tick() {
    showRetry();
    if (st.follow && !st.follow.done) renderFollowMeta();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token-input').value.trim();
      const s = storage();
      if (s) s.setItem(TOKEN_KEY, t);
      st.token = t;
      $('token-input').value = '';
      start();
    });
    $('follow-close').addEventListener('click', () => {
      unfollow(true);
      renderJobs();
    });
    setInterval(tick, 1000);
    start();
  });
})();

'use strict';
// Loaded with NODE_OPTIONS="--require /abs/path/resolve-shim.cjs" so that a Node program the tests
// must not change (Contentstack's CLI, `csdx`; an SDK script written for Contentstack) reaches the
// proxy under the host name a Pod gives it with `hostAliases`, without touching /etc/hosts. Used by
// tests/csdx.rs and tests/sdk_js.rs.
//
// RESOLVE_SHIM_HOSTS  comma-separated name=address pairs (default: cma-auth-proxy=127.0.0.1). Names
//                     are matched case-insensitively, a trailing dot is ignored.
// RESOLVE_SHIM_ONLY   when "1", every other name fails at once with ENOTFOUND (a closed network that
//                     answers quickly: the CLI's npm version check fails fast instead of waiting for a
//                     connect timeout).
// RESOLVE_SHIM_LOG    when set, a file to which every looked-up name is appended, one per line
//                     ("<name> -> <address|ENOTFOUND|system>"), so a test can assert what the program
//                     tried to reach.
//
// Why dns.lookup: net.connect (and so http, https, tls, axios's http adapter, follow-redirects and
// undici's connector behind global fetch) resolves names through `dns.lookup`, read from the `dns`
// module at call time, unless the caller passes its own `lookup` option. Node 20 connects with
// autoSelectFamily, which calls lookup with `{ all: true }`, so both answer shapes are supported.
// dns.promises.lookup is patched too, for code that resolves names itself.
const dns = require('node:dns');
const fs = require('node:fs');

const table = new Map();
for (const pair of (process.env.RESOLVE_SHIM_HOSTS || 'cma-auth-proxy=127.0.0.1').split(',')) {
  const [name, address] = pair.split('=').map((s) => s && s.trim());
  if (name && address) table.set(name.toLowerCase().replace(/\.$/, ''), address);
}
const only = process.env.RESOLVE_SHIM_ONLY === '1';
const logFile = process.env.RESOLVE_SHIM_LOG;

function note(name, outcome) {
  if (logFile) {
    try {
      fs.appendFileSync(logFile, `${name} -> ${outcome}\n`);
    } catch (_) {
      // logging must never break resolution
    }
  }
}

function answerFor(hostname) {
  const key = String(hostname).toLowerCase().replace(/\.$/, '');
  if (table.has(key)) {
    const address = table.get(key);
    return { address, family: address.includes(':') ? 6 : 4 };
  }
  // IP literals and `localhost` are left to the system resolver; they need no table entry.
  if (only && !/^[\d.]+$/.test(key) && !key.includes(':') && key !== 'localhost') {
    const err = new Error(`getaddrinfo ENOTFOUND ${hostname}`);
    err.code = 'ENOTFOUND';
    err.errno = -3008;
    err.syscall = 'getaddrinfo';
    err.hostname = hostname;
    return { err };
  }
  return null;
}

const systemLookup = dns.lookup;
dns.lookup = function lookup(hostname, options, callback) {
  if (typeof options === 'function') {
    callback = options;
    options = {};
  } else if (typeof options === 'number') {
    options = { family: options };
  } else if (options == null) {
    options = {};
  }
  const answer = answerFor(hostname);
  if (answer === null) {
    note(hostname, 'system');
    return systemLookup.call(this, hostname, options, callback);
  }
  if (answer.err) {
    note(hostname, 'ENOTFOUND');
    process.nextTick(callback, answer.err);
    return {};
  }
  note(hostname, answer.address);
  if (options.all) {
    process.nextTick(callback, null, [{ address: answer.address, family: answer.family }]);
  } else {
    process.nextTick(callback, null, answer.address, answer.family);
  }
  return {};
};

const systemPromiseLookup = dns.promises.lookup;
dns.promises.lookup = async function lookup(hostname, options = {}) {
  if (typeof options === 'number') options = { family: options };
  const answer = answerFor(hostname);
  if (answer === null) {
    note(hostname, 'system');
    return systemPromiseLookup.call(this, hostname, options);
  }
  if (answer.err) {
    note(hostname, 'ENOTFOUND');
    throw answer.err;
  }
  note(hostname, answer.address);
  const one = { address: answer.address, family: answer.family };
  return options.all ? [one] : one;
};

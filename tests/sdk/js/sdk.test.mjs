// End-to-end check that the official Contentstack JavaScript management SDK works through
// cma-auth-proxy while holding no credentials at all: the proxy injects the session token.
//
//   node sdk.test.mjs [PROXY_URL] [API_KEY]
//
// PROXY_URL (or env CMA_PROXY_URL) is the proxy's base URL, e.g. http://127.0.0.1:8080; API_KEY (or env
// CMA_API_KEY) is a stack the proxy's account can use. Every step asserts on what the SDK returns; the
// first failure ends the run with exit status 1. Run by tests/sdk_js.rs against `cma-auth-proxy dev`.
import assert from 'node:assert/strict'
import { lookup as dnsLookup } from 'node:dns'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import contentstack from '@contentstack/management'

const proxyUrl = (process.argv[2] ?? process.env.CMA_PROXY_URL ?? '').replace(/\/+$/, '')
const apiKey = process.argv[3] ?? process.env.CMA_API_KEY ?? ''
if (!/^https?:\/\//.test(proxyUrl) || apiKey === '') {
  console.error('usage: node sdk.test.mjs PROXY_URL API_KEY (or set CMA_PROXY_URL and CMA_API_KEY)')
  process.exit(2)
}

// How a sidecar client should be built. `endpoint` is used verbatim as the base URL, so requests go to
// the proxy over plain http (the `host` option would not do: it rejects IP addresses and `localhost` and
// silently falls back to the public API host). The proxy is addressed by a host name, not 127.0.0.1:
// the SDK sends every retry (after a 429, which the proxy passes through, or a network error) through an
// "SSRF" guard that, in the SDK's production build, refuses IP literals in 127/8, 10/8 and 192/8 and
// `localhost`, and throws from a timer, which crashes the process. In a Pod the name comes from
// `hostAliases` (or /etc/hosts, docker --add-host); here `lookup` plays that part. No credentials.
const PROXY_HOST = 'cma-auth-proxy'
const proxy = new URL(proxyUrl)
const proxyAddress = proxy.hostname.replace(/^\[|\]$/g, '')
function lookup (hostname, options, callback) {
  if (hostname !== PROXY_HOST) return dnsLookup(hostname, options, callback)
  const family = proxyAddress.includes(':') ? 6 : 4
  if (options.all) return callback(null, [{ address: proxyAddress, family }])
  return callback(null, proxyAddress, family)
}
const endpoint = `${proxy.protocol}//${PROXY_HOST}:${proxy.port || 80}/v3`
const client = contentstack.client({ endpoint, lookup })
const stack = client.stack({ api_key: apiKey })
const run = `${Date.now()}_${Math.floor(Math.random() * 1e6)}`

// An exception thrown inside the SDK's timers would otherwise end the run with a dump of its minified
// bundle instead of the error.
process.on('uncaughtException', (error) => {
  console.error('FAIL uncaught exception, thrown inside the SDK')
  console.error(error)
  process.exit(1)
})

let failed = false
async function step (name, fn) {
  if (failed) return
  try {
    await fn()
    console.log(`ok   ${name}`)
  } catch (error) {
    failed = true
    console.error(`FAIL ${name}`)
    console.error(error)
  }
}

/** Awaits a call that must fail, and returns the SDK's error for assertions. */
async function rejection (promise) {
  try {
    await promise
  } catch (error) {
    return error
  }
  assert.fail('the call succeeded but should have failed')
}

// The smallest valid PNG: one transparent pixel.
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==',
  'base64'
)
const workdir = mkdtempSync(join(tmpdir(), 'cma-sdk-test-'))

await step('the client holds no credentials', () => {
  const defaults = client.axiosInstance.defaults.headers
  for (const name of ['authtoken', 'authorization']) {
    assert.equal(defaults[name], undefined, name)
    assert.equal(defaults.common?.[name], undefined, name)
  }
  assert.equal(client.axiosInstance.defaults.baseURL, endpoint)
})

await step('get user', async () => {
  const user = await client.getUser()
  assert.match(user.email, /@/)
  assert.equal(typeof user.uid, 'string')
  // Contentstack's user object carries the session token; the proxy's placeholder stands in its place.
  assert.match(user.authtoken, /^cma-auth-proxy-session-[0-9a-f]{32}$/, 'the session token must not reach the client')
})

await step('an unknown api_key is refused like the CMA does', async () => {
  const error = await rejection(client.stack({ api_key: `no_such_stack_${run}` }).contentType().query().find())
  assert.equal(error.status, 412)
  assert.equal(error.errorCode, 109)
})

const ctUid = `sdk_test_${run}`
await step('create a content type', async () => {
  const ct = await stack.contentType().create({
    content_type: {
      title: `SDK test ${run}`,
      uid: ctUid,
      schema: [
        { display_name: 'Title', uid: 'title', data_type: 'text', mandatory: true, unique: true, field_metadata: { _default: true } },
        { display_name: 'Body', uid: 'body', data_type: 'text', mandatory: false, field_metadata: {} }
      ]
    }
  })
  assert.equal(ct.uid, ctUid)
  assert.equal(ct.title, `SDK test ${run}`)
  assert.equal(ct.schema.length, 2)
  assert.equal(ct._version, 1)
})

await step('fetch the content type and find it in the list', async () => {
  const ct = await stack.contentType(ctUid).fetch()
  assert.equal(ct.uid, ctUid)
  const all = await stack.contentType().query({ include_count: true }).find()
  assert.ok(all.items.some((item) => item.uid === ctUid))
  assert.ok(all.count >= 1)
})

let entryUid
await step('create an entry', async () => {
  const entry = await stack.contentType(ctUid).entry().create({ entry: { title: `Hello ${run}`, body: 'first' } })
  assert.match(entry.uid, /^blt[0-9a-f]+$/)
  assert.equal(entry.title, `Hello ${run}`)
  assert.equal(entry.body, 'first')
  assert.equal(entry._version, 1)
  assert.equal(typeof entry.created_at, 'string')
  entryUid = entry.uid
})

await step('fetch the entry', async () => {
  const entry = await stack.contentType(ctUid).entry(entryUid).fetch()
  assert.equal(entry.uid, entryUid)
  assert.equal(entry.body, 'first')
  assert.equal(entry._version, 1)
})

await step('update the entry', async () => {
  const entry = await stack.contentType(ctUid).entry(entryUid).fetch()
  entry.body = 'second'
  const updated = await entry.update()
  assert.equal(updated.uid, entryUid)
  assert.equal(updated.body, 'second')
  assert.equal(updated._version, 2)
  const again = await stack.contentType(ctUid).entry(entryUid).fetch()
  assert.equal(again.body, 'second')
  assert.equal(again._version, 2)
})

await step('list the entries', async () => {
  const entries = await stack.contentType(ctUid).entry().query({ include_count: true }).find()
  assert.equal(entries.count, 1)
  assert.deepEqual(entries.items.map((e) => e.uid), [entryUid])
})

await step('delete the entry, then fetching it fails', async () => {
  const response = await stack.contentType(ctUid).entry(entryUid).delete()
  assert.equal(response.notice, 'Entry deleted successfully.')
  const error = await rejection(stack.contentType(ctUid).entry(entryUid).fetch())
  assert.equal(error.errorCode, 141)
  assert.ok([404, 422].includes(error.status), `status ${error.status}`)
})

let assetUid
await step('upload an asset (multipart/form-data)', async () => {
  const path = join(workdir, 'pixel.png')
  writeFileSync(path, PNG)
  const asset = await stack.asset().create({ upload: path, title: `Pixel ${run}`, description: 'one pixel', tags: ['sdk', 'test'] })
  assert.match(asset.uid, /^blt[0-9a-f]+$/)
  assert.equal(asset.filename, 'pixel.png')
  assert.equal(asset.content_type, 'image/png')
  assert.equal(asset.file_size, String(PNG.length))
  assert.equal(asset.title, `Pixel ${run}`)
  assert.equal(asset.description, 'one pixel')
  assert.deepEqual(asset.tags, ['sdk', 'test'])
  assert.match(asset.url, /^https?:\/\/.*\/assets\//)
  assetUid = asset.uid
})

await step('fetch the asset and find it in the list', async () => {
  const asset = await stack.asset(assetUid).fetch()
  assert.equal(asset.uid, assetUid)
  assert.equal(asset.filename, 'pixel.png')
  assert.equal(asset.file_size, String(PNG.length))
  const all = await stack.asset().query().find()
  assert.ok(all.items.some((item) => item.uid === assetUid))
})

await step('delete the asset, then fetching it fails', async () => {
  const response = await stack.asset(assetUid).delete()
  assert.equal(response.notice, 'Asset deleted successfully.')
  const error = await rejection(stack.asset(assetUid).fetch())
  assert.equal(error.errorCode, 145)
})

await step('delete the content type', async () => {
  const response = await stack.contentType(ctUid).delete()
  assert.equal(response.notice, 'Content Type deleted successfully.')
})

rmSync(workdir, { recursive: true, force: true })
if (failed) {
  process.exit(1)
}
console.log('all SDK steps passed')

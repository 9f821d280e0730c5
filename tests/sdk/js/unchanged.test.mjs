// A script written for Contentstack itself, run unchanged against cma-auth-proxy: it logs in with an
// account's e-mail, password and two-factor secret, reads the user, creates, reads, updates and
// deletes an entry, logs out, and goes on with one more request, as a migration script or sync job
// does. Only the endpoint it is given points at the sidecar (by a host name, as in a Pod); the
// credentials it holds are not the service account's at all: the proxy answers the login itself and
// discards them.
//
//   CONTENTSTACK_ENDPOINT=http://cma-auth-proxy:8080/v3 CONTENTSTACK_API_KEY=... \
//   CONTENTSTACK_EMAIL=... CONTENTSTACK_PASSWORD=... CONTENTSTACK_MFA_SECRET=... node unchanged.test.mjs
//
// Every step asserts on what the SDK returns; the first failure ends the run with exit status 1.
// Run by tests/sdk_js.rs, which resolves the host name with tests/support/resolve-shim.cjs.
import assert from 'node:assert/strict'
import contentstack from '@contentstack/management'

const env = process.env
const client = contentstack.client({ endpoint: env.CONTENTSTACK_ENDPOINT })
const stack = client.stack({ api_key: env.CONTENTSTACK_API_KEY })
const run = `${Date.now()}_${Math.floor(Math.random() * 1e6)}`

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

await step('login (e-mail, password, two-factor secret)', async () => {
  // With mfaSecret the SDK computes the two-factor code and sends it as tfa_token.
  const answer = await client.login({
    email: env.CONTENTSTACK_EMAIL,
    password: env.CONTENTSTACK_PASSWORD,
    mfaSecret: env.CONTENTSTACK_MFA_SECRET
  })
  assert.equal(answer.notice, 'Login Successful.')
  assert.match(answer.user.email, /@/)
  console.log(`     logged in as ${answer.user.email}`)
})

await step('get user', async () => {
  const user = await client.getUser()
  assert.match(user.email, /@/)
})

const ctUid = `js_unchanged_${run}`
let entryUid
await step('create a content type', async () => {
  const ct = await stack.contentType().create({
    content_type: {
      title: `JS unchanged ${run}`,
      uid: ctUid,
      schema: [{ display_name: 'Title', uid: 'title', data_type: 'text', mandatory: true, unique: true }]
    }
  })
  assert.equal(ct.uid, ctUid)
})

await step('create an entry', async () => {
  const entry = await stack.contentType(ctUid).entry().create({ entry: { title: `Hello ${run}` } })
  entryUid = entry.uid
  assert.equal(entry._version, 1)
})

await step('read the entry', async () => {
  const entry = await stack.contentType(ctUid).entry(entryUid).fetch()
  assert.equal(entry.title, `Hello ${run}`)
})

await step('update the entry', async () => {
  const entry = await stack.contentType(ctUid).entry(entryUid).fetch()
  entry.title = `Bye ${run}`
  const updated = await entry.update()
  assert.equal(updated.title, `Bye ${run}`)
  assert.equal(updated._version, 2)
})

await step('delete the entry', async () => {
  const response = await stack.contentType(ctUid).entry(entryUid).delete()
  assert.equal(response.notice, 'Entry deleted successfully.')
})

await step('logout', async () => {
  const response = await client.logout()
  assert.equal(response.notice, "You've logged out successfully!")
})

await step('the next request still works', async () => {
  const user = await client.getUser()
  assert.match(user.email, /@/)
  await stack.contentType(ctUid).delete()
})

if (failed) {
  process.exit(1)
}
console.log('all steps passed')

// E2B's JS SDK, unchanged, against emberd's E2B-compatible listener.
// Run by sandbox/e2b's TestSDK (go test), which sets E2B_API_URL,
// E2B_SANDBOX_URL, E2B_API_KEY, EMBER_TEMPLATE and EMBER_WORKDIR (the
// folder the stand-in agent may write: it runs on the test's host).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import dns from 'node:dns'
import { Sandbox, CommandExitError, AuthenticationError, RateLimitError } from 'e2b'

const template = process.env.EMBER_TEMPLATE
const work = process.env.EMBER_WORKDIR
// The port of the test's HTTP server in the sandbox, and how many
// sandboxes emberd's admission lets run at once.
const userPort = Number(process.env.EMBER_USER_PORT || 8000)
const maxSandboxes = Number(process.env.EMBER_MAX_SANDBOXES || 2)

// localhostLookup resolves names under "localhost" to the loopback, as
// RFC 6761 (6.3) asks and curl and browsers do; Node asks the system's
// resolver, which does so only with libnss-myhostname.
function localhostLookup(name, opts, cb) {
  if (name === 'localhost' || name.endsWith('.localhost')) {
    return opts.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)
  }
  return dns.lookup(name, opts, cb)
}

// get fetches url and resolves to { status, body }.
function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { lookup: localhostLookup, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

// waitFor polls cond until it holds (bounded: 20 s).
async function waitFor(what, cond) {
  for (let i = 0; i < 400; i++) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  assert.fail(`timed out waiting for ${what}`)
}

test('lifecycle: create, list by metadata, getInfo, setTimeout, kill', async () => {
  const sbx = await Sandbox.create(template, { metadata: { suite: 'sdk' } })
  const other = await Sandbox.create(template, { metadata: { suite: 'other' } })
  try {
    const page = await Sandbox.list({ query: { metadata: { suite: 'sdk' } } }).nextItems()
    assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal(page[0].templateId, template)
    assert.equal(page[0].state, 'running')

    await sbx.setTimeout(120_000)
    const info = await sbx.getInfo()
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 100_000 && left <= 120_000, `endAt is ${left} ms away, want about 120 s`)
    assert.equal(await sbx.isRunning(), true)

    // getMetrics: one sample, now, from the sandbox's agent.
    const [m, ...more] = await sbx.getMetrics()
    assert.equal(more.length, 0)
    assert.ok(m.cpuCount >= 1 && m.cpuUsedPct >= 0 && m.cpuUsedPct <= 100, JSON.stringify(m))
    assert.ok(m.memTotal > 0 && m.memUsed > 0 && m.memUsed <= m.memTotal, JSON.stringify(m))
    assert.ok(m.diskTotal > 0 && m.diskUsed <= m.diskTotal, JSON.stringify(m))
    assert.ok(Math.abs(m.timestamp.getTime() - Date.now()) < 60_000, `timestamp ${m.timestamp}`)
    assert.deepEqual(await sbx.getMetrics({ end: new Date(Date.now() - 3_600_000) }), [], 'an hour ago: no sample')
  } finally {
    assert.equal(await sbx.kill(), true)
    assert.equal(await other.kill(), true)
  }
  assert.equal(await Sandbox.kill(sbx.sandboxId), false, 'a killed sandbox is not found')
  assert.equal(await Sandbox.kill('sb-000000000000'), false, 'an unknown sandbox is not found')
})

test('a wrong API key is refused', async () => {
  await assert.rejects(Sandbox.create(template, { apiKey: 'e2b_wrong' }), AuthenticationError)
})

test('commands and files through the envd gateway', async () => {
  const sbx = await Sandbox.create(template)
  try {
    const r = await sbx.commands.run('echo hi; echo oops >&2')
    assert.equal(r.stdout, 'hi\n')
    assert.equal(r.stderr, 'oops\n')
    assert.equal(r.exitCode, 0)

    await assert.rejects(sbx.commands.run('exit 3'), (err) => err instanceof CommandExitError && err.exitCode === 3)

    // A background command streams through onStdout while it runs and is
    // killed with commands.kill.
    const lines = []
    const bg = await sbx.commands.run('for i in 1 2 3; do echo line$i; sleep 0.1; done; sleep 600', {
      background: true,
      onStdout: (d) => lines.push(d),
    })
    await waitFor('three lines', () => lines.join('').includes('line3'))
    assert.equal(await sbx.commands.kill(bg.pid), true)
    await assert.rejects(bg.wait(), CommandExitError)
    assert.equal(await sbx.commands.kill(bg.pid), false, 'a finished process is not found')

    // sendStdin reaches cat.
    let catOut = ''
    const cat = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => (catOut += d) })
    await sbx.commands.sendStdin(cat.pid, 'meow\n')
    await waitFor('cat to echo', () => catOut === 'meow\n')
    await sbx.commands.closeStdin(cat.pid)
    assert.equal((await cat.wait()).exitCode, 0)

    // A PTY session echoes typed input.
    let screen = ''
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (screen += new TextDecoder().decode(d)) })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo pty-$((6*7))\n'))
    await waitFor('the terminal to answer', () => screen.includes('pty-42'))
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 })
    await sbx.pty.kill(pty.pid)

    // Files.
    const dir = `${work}/files`
    assert.equal(await sbx.files.makeDir(dir), true)
    assert.equal(await sbx.files.makeDir(dir), false, 'makeDir of an existing folder')
    const events = []
    const watch = await sbx.files.watchDir(dir, (e) => events.push(e))
    const w = await sbx.files.write(`${dir}/a.txt`, 'hello')
    assert.equal(w.path, `${dir}/a.txt`)
    assert.equal(await sbx.files.read(`${dir}/a.txt`), 'hello')
    assert.equal(await sbx.files.exists(`${dir}/a.txt`), true)
    assert.equal(await sbx.files.exists(`${dir}/none`), false)
    await sbx.files.write(`${dir}/big.bin`, new Blob(['ember'.repeat(100000)]), { gzip: true })
    assert.equal((await sbx.files.getInfo(`${dir}/big.bin`)).size, 500000)
    const names = (await sbx.files.list(dir)).map((e) => e.name).sort()
    assert.deepEqual(names, ['a.txt', 'big.bin'])
    await sbx.files.rename(`${dir}/a.txt`, `${dir}/b.txt`)
    assert.equal(await sbx.files.exists(`${dir}/a.txt`), false)
    await sbx.files.remove(`${dir}/b.txt`)
    assert.equal(await sbx.files.exists(`${dir}/b.txt`), false)
    await waitFor('watch events', () => events.some((e) => e.name === 'a.txt' && e.type === 'create'))
    await watch.stop()

    // Signed URLs: no headers, no sandbox ID.
    const url = await sbx.downloadUrl(`${dir}/big.bin`, { useSignatureExpiration: 60 })
    const res = await fetch(url)
    assert.equal(res.status, 200)
    assert.equal((await res.text()).length, 500000)
  } finally {
    await sbx.kill()
  }
  // A killed sandbox's envd is gone.
  await assert.rejects(sbx.commands.run('true'))
})

// In the lab only (a real guest: the stand-in agent of the unit test has
// no VM to pause): pause, then connect, keeps files and a running process.
test('pause then connect keeps files and a running process', { skip: process.env.EMBER_LAB !== '1' }, async () => {
  const sbx = await Sandbox.create(template)
  try {
    await sbx.files.write(`${work}/kept.txt`, 'kept across a pause')
    const bg = await sbx.commands.run('sleep 600', { background: true })
    assert.equal(await sbx.betaPause(), true)
    assert.equal((await sbx.getInfo()).state, 'paused')
    const same = await Sandbox.connect(sbx.sandboxId)
    assert.equal(await same.files.read(`${work}/kept.txt`), 'kept across a pause')
    const procs = await same.commands.list()
    assert.ok(procs.some((p) => p.pid === bg.pid), `the background process ${bg.pid} is gone after the pause: ${JSON.stringify(procs)}`)
    assert.equal(await same.commands.kill(bg.pid), true)
  } finally {
    await sbx.kill()
  }
})

test('an HTTP server in the sandbox answers through getHost', async () => {
  const sbx = await Sandbox.create(template)
  try {
    await sbx.files.write(`${work}/www/index.html`, 'served from the sandbox')
    // Bound to the sandbox's loopback only: emberd reaches it through the
    // agent, not the network.
    const srv = await sbx.commands.run(`cd ${work}/www && exec python3 -m http.server ${userPort} --bind 127.0.0.1`, { background: true })
    const host = sbx.getHost(userPort)
    assert.ok(host.startsWith(`${userPort}-${sbx.sandboxId}.`), `getHost gave ${host}`)
    let res
    await waitFor('the server in the sandbox', async () => {
      res = await get(`http://${host}/index.html`)
      return res.status !== 502
    })
    assert.equal(res.status, 200)
    assert.equal(res.body, 'served from the sandbox')
    assert.equal(await sbx.commands.kill(srv.pid), true)
    await waitFor('the port to close', async () => (await get(`http://${host}/`)).status === 502)
  } finally {
    await sbx.kill()
  }
})

test('with admission full, create raises the rate-limit error; a retry fits once a sandbox ends', async () => {
  const held = []
  try {
    for (let i = 0; i < maxSandboxes; i++) held.push(await Sandbox.create(template))
    await assert.rejects(Sandbox.create(template, { retries: 0 }), RateLimitError)
    // The SDK waits Retry-After and retries: a sandbox ending meanwhile
    // makes room.
    const waiting = Sandbox.create(template)
    await new Promise((r) => setTimeout(r, 300))
    assert.equal(await held.shift().kill(), true)
    held.push(await waiting)
    assert.equal(await held.at(-1).isRunning(), true)
  } finally {
    for (const s of held) await s.kill()
  }
})

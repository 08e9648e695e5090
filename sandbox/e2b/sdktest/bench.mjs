// ember-bench lab-sandbox's E2B half: E2B's JS SDK, unchanged, creates a
// sandbox from EMBER_TEMPLATE and runs `echo` in it; each line printed is
// the time from the create call until the first byte of echo's output:
// "create_to_exec_ms N". With EMBER_CREATES=N it does N creates one after
// the other; with EMBER_CREATES=stdin, one warm-up create (not printed),
// then one create for each line read on stdin, so that the benchmark can
// alternate them with its own from one warm process.
import { createInterface } from 'node:readline'
import { Sandbox } from 'e2b'

const template = process.env.EMBER_TEMPLATE

async function once() {
  const t0 = performance.now()
  const sbx = await Sandbox.create(template)
  let first = 0
  await sbx.commands.run('echo ready', {
    onStdout: () => {
      if (!first) first = performance.now()
    },
  })
  await sbx.kill()
  return first - t0
}

if (process.env.EMBER_CREATES === 'stdin') {
  await once()
  console.log('warm')
  for await (const _ of createInterface({ input: process.stdin })) {
    console.log(`create_to_exec_ms ${(await once()).toFixed(3)}`)
  }
} else {
  const creates = Number(process.env.EMBER_CREATES || '20')
  for (let i = 0; i < creates; i++) console.log(`create_to_exec_ms ${(await once()).toFixed(3)}`)
}

// ember-bench lab-sandbox's E2B half: E2B's JS SDK, unchanged, creates a
// sandbox from EMBER_TEMPLATE and runs `echo` in it, EMBER_CREATES times
// one after the other; each line printed is the time from the create
// call until the first byte of echo's output: "create_to_exec_ms N".
import { Sandbox } from 'e2b'

const template = process.env.EMBER_TEMPLATE
const creates = Number(process.env.EMBER_CREATES || '20')
for (let i = 0; i < creates; i++) {
  const t0 = performance.now()
  const sbx = await Sandbox.create(template)
  let first = 0
  await sbx.commands.run('echo ready', {
    onStdout: () => {
      if (!first) first = performance.now()
    },
  })
  console.log(`create_to_exec_ms ${(first - t0).toFixed(3)}`)
  await sbx.kill()
}

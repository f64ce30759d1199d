// The `e2b` JS SDK's Template.build() (unmodified, from npm) against Corral: a COPY whose files the
// SDK uploads through the link the server answers, RUN (also as root), ENV, a workdir, a start
// command with its readiness check; a sandbox from the result; a failing step's BuildError.
// Run by tests/compat/test_e2b_js.py.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, describe, test } from 'node:test'

import { BuildError, Sandbox, Template, waitForFile } from 'e2b'

const unique = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`

describe('template builds', () => {
  const context = mkdtempSync(join(tmpdir(), 'corral-js-template-'))
  after(() => rmSync(context, { recursive: true, force: true }))

  test('Template.build() runs the steps and sandboxes start from the template', async () => {
    mkdirSync(join(context, 'site'))
    writeFileSync(join(context, 'site', 'index.html'), '<p>from js</p>\n')
    const template = Template({ fileContextPath: context })
      .fromTemplate('base')
      .setEnvs({ SITE: '/home/user/site' })
      .copy('site', '/home/user/site')
      .runCmd('wc -c < $SITE/index.html > /home/user/size && id -un >> /home/user/size')
      .runCmd('touch /opt/made-by-root', { user: 'root' })
      .setWorkdir('/home/user/site')
      .setStartCmd('touch /tmp/up && exec sleep infinity', waitForFile('/tmp/up'))
    const name = unique('js-app')
    const logs = []
    const info = await Template.build(template, name, { onBuildLogs: (entry) => logs.push(entry.message) })
    assert.equal(info.templateId, name)
    assert.ok(logs.some((m) => m.includes(`template '${name}' is ready`)), logs.join('\n'))
    assert.equal(await Template.exists(name), true)

    const sbx = await Sandbox.create(name, { timeoutMs: 60_000 })
    try {
      assert.equal((await sbx.commands.run('cat /home/user/size')).stdout, '15\nuser\n')
      assert.equal((await sbx.commands.run('pwd; cat index.html; stat -c %U /opt/made-by-root')).stdout,
        '/home/user/site\n<p>from js</p>\nroot\n')
      assert.equal(await sbx.files.exists('/tmp/up'), true)
    } finally {
      await sbx.kill()
    }
  })

  test('a failing step rejects with BuildError carrying its output', async () => {
    const template = Template().fromTemplate('base').runCmd('echo js-reason >&2; exit 4')
    const name = unique('js-bad')
    await assert.rejects(Template.build(template, name),
      (err) => err instanceof BuildError && /exit code 4 \(step 1\)/.test(err.message) && /js-reason/.test(err.message))
    assert.equal(await Template.exists(name), false)
  })
})

// The `e2b` JS SDK (unmodified, from npm) against Corral: control plane, commands (envd process
// RPC) and files (envd filesystem RPC + /files). Run by tests/compat/test_e2b_js.py, which points the
// SDK at a test server with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { CommandExitError, FileNotFoundError, NotFoundError, Sandbox } from 'e2b'

describe('sandbox lifecycle', () => {
  test('create, getInfo, setTimeout, list, connect, kill', async () => {
    const sbx = await Sandbox.create({ timeoutMs: 120_000, metadata: { suite: 'js-lifecycle' } })
    try {
      assert.match(sbx.sandboxId, /^[a-z0-9]+$/)
      const info = await sbx.getInfo()
      assert.equal(info.sandboxId, sbx.sandboxId)
      assert.equal(info.state, 'running')
      assert.deepEqual(info.metadata, { suite: 'js-lifecycle' })
      assert.ok(info.endAt > info.startedAt)
      assert.equal(await sbx.isRunning(), true)

      await sbx.setTimeout(300_000)
      const extended = await Sandbox.getInfo(sbx.sandboxId)
      assert.ok(extended.endAt.getTime() - Date.now() > 200_000, `endAt ${extended.endAt.toISOString()}`)

      const paginator = Sandbox.list({ query: { metadata: { suite: 'js-lifecycle' } } })
      const listed = await paginator.nextItems()
      assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])

      const again = await Sandbox.connect(sbx.sandboxId)
      assert.equal(again.sandboxId, sbx.sandboxId)
      assert.equal((await again.commands.run('echo connected')).stdout, 'connected\n')
    } finally {
      assert.equal(await sbx.kill(), true)
    }
    assert.equal(await Sandbox.kill(sbx.sandboxId), false)
    assert.equal(await sbx.isRunning(), false)
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId), (err) => err instanceof NotFoundError)
  })
})

describe('commands and files', () => {
  let sbx
  before(async () => {
    sbx = await Sandbox.create({ timeoutMs: 300_000 })
  })
  after(async () => {
    await sbx?.kill()
  })

  test('commands.run collects output, exit codes and callbacks', async () => {
    const res = await sbx.commands.run('echo out; echo err >&2; whoami; pwd')
    assert.equal(res.exitCode, 0)
    assert.equal(res.stdout, 'out\nuser\n/home/user\n')
    assert.equal(res.stderr, 'err\n')

    const seen = []
    await sbx.commands.run('for i in 1 2 3; do echo $i; done', { onStdout: (d) => seen.push(d) })
    assert.equal(seen.join(''), '1\n2\n3\n')

    const envs = await sbx.commands.run('echo "$GREETING" from $PWD', { envs: { GREETING: 'hi' }, cwd: '/tmp' })
    assert.equal(envs.stdout, 'hi from /tmp\n')

    await assert.rejects(sbx.commands.run('echo bad >&2; exit 3'), (err) => {
      assert.ok(err instanceof CommandExitError)
      assert.equal(err.exitCode, 3)
      assert.equal(err.stderr, 'bad\n')
      return true
    })
  })

  test('background commands stream, can be listed and killed', async () => {
    const lines = []
    const handle = await sbx.commands.run('sleep 0.3; echo done', { background: true, onStdout: (d) => lines.push(d) })
    assert.ok(handle.pid > 0)
    const result = await handle.wait()
    assert.equal(result.exitCode, 0)
    assert.equal(lines.join(''), 'done\n')

    const sleeper = await sbx.commands.run('sleep 600', { background: true })
    const running = await sbx.commands.list()
    assert.ok(running.some((p) => p.pid === sleeper.pid), JSON.stringify(running))
    assert.equal(await sbx.commands.kill(sleeper.pid), true)
    await assert.rejects(sleeper.wait(), (err) => err instanceof CommandExitError)
  })

  test('files write, read, list, exists, remove', async () => {
    const info = await sbx.files.write('/home/user/js/hello.txt', 'hello from js')
    assert.equal(info.path, '/home/user/js/hello.txt')
    assert.equal(await sbx.files.read('/home/user/js/hello.txt'), 'hello from js')
    const bytes = await sbx.files.read('/home/user/js/hello.txt', { format: 'bytes' })
    assert.equal(Buffer.from(bytes).toString(), 'hello from js')

    await sbx.files.write('/home/user/js/data.bin', new Uint8Array([0, 1, 2, 255]).buffer)
    const data = await sbx.files.read('/home/user/js/data.bin', { format: 'bytes' })
    assert.deepEqual([...data], [0, 1, 2, 255])

    const entries = await sbx.files.list('/home/user/js')
    assert.deepEqual(entries.map((e) => e.name).sort(), ['data.bin', 'hello.txt'])
    assert.ok(entries.every((e) => e.type === 'file'))

    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), true)
    await sbx.files.remove('/home/user/js/hello.txt')
    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), false)
    await assert.rejects(sbx.files.read('/home/user/js/hello.txt'), (err) => err instanceof FileNotFoundError)

    // files written through the SDK are visible to commands, as the same user
    // python, not coreutils stat: gVisor's runsc rejects its statx flags (docs/gvisor.md)
    const owner = await sbx.commands.run(
      'python3 -c "import os, pwd; print(pwd.getpwuid(os.stat(\'/home/user/js/data.bin\').st_uid).pw_name)"')
    assert.equal(owner.stdout, 'user\n')
  })
})

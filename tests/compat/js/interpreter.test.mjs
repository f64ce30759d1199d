// The `@e2b/code-interpreter` JS SDK (unmodified, from npm) against Corral's port 49999
// (/execute, /contexts). Run by tests/compat/test_e2b_js.py.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { NotFoundError, Sandbox, TimeoutError } from '@e2b/code-interpreter'

describe('runCode', () => {
  let sbx
  before(async () => {
    sbx = await Sandbox.create({ timeoutMs: 300_000 }) // template code-interpreter-v1
  })
  after(async () => {
    await sbx?.kill()
  })

  test('state, logs and the main result', async () => {
    await sbx.runCode('x = 1')
    const ex = await sbx.runCode('print(x); x + 41')
    assert.deepEqual(ex.logs.stdout, ['1\n'])
    assert.equal(ex.text, '42')
    assert.equal(ex.error, undefined)
    assert.ok(ex.executionCount >= 2)
  })

  test('errors are data, callbacks stream', async () => {
    const ex = await sbx.runCode('1/0')
    assert.equal(ex.error.name, 'ZeroDivisionError')
    assert.match(ex.error.traceback, /ZeroDivisionError/)

    const out = []
    const errs = []
    const results = []
    await sbx.runCode("import sys\nprint('a')\nprint('b', file=sys.stderr)\n'c'", {
      onStdout: (m) => out.push(m.line),
      onStderr: (m) => errs.push(m.line),
      onResult: (r) => results.push(r.text),
    })
    assert.deepEqual(out, ['a\n'])
    assert.deepEqual(errs, ['b\n'])
    assert.deepEqual(results, ['c'])
  })

  test('rich results: html and png', async () => {
    const table = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert.match(table.results[0].html, /<table/)
    const plot = await sbx.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()')
    const png = plot.results.find((r) => r.png)
    assert.ok(png, JSON.stringify(plot.results))
    assert.equal(Buffer.from(png.png, 'base64').subarray(1, 4).toString(), 'PNG')
  })

  test('javascript, typescript and bash', async () => {
    assert.equal((await sbx.runCode('const a = 2; a * 21', { language: 'js' })).text, '42')
    assert.equal((await sbx.runCode('const t: string = "ts"; t.toUpperCase()', { language: 'ts' })).text, 'TS')
    assert.deepEqual((await sbx.runCode('echo $((6 * 7))', { language: 'bash' })).logs.stdout, ['42\n'])
  })

  test('env vars apply to one execution', async () => {
    const code = "import os; os.environ.get('JS_ENV')"
    assert.equal((await sbx.runCode(code, { envs: { JS_ENV: 'set' } })).text, 'set')
    assert.equal((await sbx.runCode(code)).text, undefined)
  })

  test('contexts: create, list, restart, remove', async () => {
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' })
    assert.equal(ctx.language, 'python')
    assert.equal(ctx.cwd, '/tmp')
    assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, '/tmp')

    const listed = await sbx.listCodeContexts()
    assert.ok(listed.some((c) => c.id === ctx.id))
    const languages = new Set(listed.map((c) => c.language))
    assert.ok(languages.has('python') && languages.has('javascript'))

    await sbx.runCode('y = 1', { context: ctx })
    await sbx.restartCodeContext(ctx)
    assert.equal((await sbx.runCode('y', { context: ctx })).error.name, 'NameError')

    await sbx.removeCodeContext(ctx.id)
    await assert.rejects(sbx.runCode('1', { context: ctx }), (err) => {
      assert.ok(err instanceof NotFoundError, String(err))
      assert.match(err.message, new RegExp(`Context ${ctx.id} not found`))
      return true
    })
  })

  test('a javascript context keeps its own state', async () => {
    const ctx = await sbx.createCodeContext({ language: 'javascript' })
    assert.equal(ctx.language, 'javascript')
    await sbx.runCode('let counter = 10', { context: ctx })
    const ex = await sbx.runCode('counter += 1; console.log("n", counter); counter', { context: ctx })
    assert.equal(ex.text, '11')
    assert.deepEqual(ex.logs.stdout, ['n 11\n'])
  })

  test('timeoutMs ends the call; the context stays usable', async () => {
    const ctx = await sbx.createCodeContext()
    await sbx.runCode('kept = 3', { context: ctx })
    await assert.rejects(sbx.runCode('import time; time.sleep(60)', { context: ctx, timeoutMs: 2_000 }),
      (err) => err instanceof TimeoutError)
    const ex = await sbx.runCode('kept', { context: ctx, timeoutMs: 30_000 })
    assert.equal(ex.text, '3')
  })
})

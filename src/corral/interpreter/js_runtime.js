'use strict'
/**
 * The JavaScript runtime of a context: a child of js_driver.js that runs cells in its own global scope.
 *
 * Started by the driver with fork(): requests come over the IPC channel; the cell's output is this
 * process's own stdout/stderr (pipes the driver reads, so output of child processes is caught too).
 * After each cell it writes `\0<token>:\0` on both pipes, then sends the cell's result or error and
 * `done` over IPC; the driver cuts the pipes at the markers. SIGINT interrupts the running cell
 * (`breakOnSigint` for synchronous code, a rejected race for awaited code) and is otherwise ignored.
 * Single-threaded: one cell at a time, as the driver sends them.
 */

const Module = require('module')
const path = require('path')
const util = require('util')
const vm = require('vm')
const { rewrite } = require('./js_rewrite.js')

const TYPESCRIPT = ['/usr/local/lib/node_modules/typescript', '/usr/lib/node_modules/typescript', 'typescript']
const writeOut = process.stdout.write.bind(process.stdout) // before any cell can replace them
const writeErr = process.stderr.write.bind(process.stderr)
const send = process.send.bind(process)

function loadTypeScript () {
  for (const candidate of TYPESCRIPT) {
    try {
      return require(candidate)
    } catch (_) {}
  }
  return null
}

const ts = loadTypeScript()

class Interrupted extends Error {}

function globals (cwd) {
  const filename = path.join(cwd, '<cell>')
  const cellRequire = Module.createRequire(filename)
  const cellModule = { exports: {}, require: cellRequire, id: '<cell>', filename, paths: cellRequire.resolve.paths('x') }
  Object.assign(globalThis, {
    require: cellRequire, module: cellModule, exports: cellModule.exports, __filename: filename, __dirname: cwd
  })
}

/** TypeScript (or JavaScript with import/export) to a CommonJS script; syntax errors are thrown. */
function transpile (code, isTypeScript) {
  if (!ts) {
    const error = new Error('the typescript package is not installed in this sandbox')
    error.name = 'TypeScriptUnavailable'
    throw error
  }
  const out = ts.transpileModule(code, {
    fileName: isTypeScript ? 'cell.ts' : 'cell.js',
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, esModuleInterop: true, allowJs: true
    }
  })
  const errors = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error &&
    d.start !== undefined && !/top level|top-level/i.test(ts.flattenDiagnosticMessageText(d.messageText, '\n')))
  if (errors.length) {
    const d = errors[0]
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start)
    const error = new SyntaxError(ts.flattenDiagnosticMessageText(d.messageText, '\n'))
    error.stack = `<cell>:${line + 1}:${character + 1}\n${error.name}: ${error.message}`
    throw error
  }
  return out.outputText
}

const MODULE_SYNTAX = /^\s*(import\s*[\w{*'"]|export\s)/m

function compile (code, language, count) {
  let js = code
  if (language === 'typescript') js = transpile(code, true)
  else if (MODULE_SYNTAX.test(code)) js = transpile(code, false)
  const { code: source, isAsync } = ts ? rewrite(ts, js) : { code: js, isAsync: false }
  return { script: new vm.Script(source, { filename: `<cell-${count}>` }), isAsync }
}

function cleanStack (stack) {
  return String(stack).split('\n')
    .filter((line) => !/^\s+at .*(node:|js_runtime\.js|js_driver\.js|new Script)/.test(line))
    .join('\n')
}

function errorFields (error) {
  if (error && error.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') {
    const value = 'Script execution was interrupted by SIGINT'
    return { name: 'Interrupted', value, traceback: `Interrupted: ${value}` }
  }
  if (error instanceof Interrupted) {
    return { name: 'Interrupted', value: error.message, traceback: `Interrupted: ${error.message}` }
  }
  if (error instanceof Error) {
    const name = error.name || 'Error'
    return { name, value: String(error.message), traceback: cleanStack(error.stack || `${name}: ${error.message}`) }
  }
  const shown = util.inspect(error)
  return { name: 'Error', value: shown, traceback: `Uncaught ${shown}` }
}

function resultFields (value) {
  let text = util.inspect(value)
  if (text.length >= 2 && text.startsWith("'") && text.endsWith("'")) text = text.slice(1, -1) // as E2B does
  return { is_main_result: true, text }
}

function withEnvs (envs) {
  const saved = {}
  for (const [key, value] of Object.entries(envs || {})) {
    saved[key] = Object.prototype.hasOwnProperty.call(process.env, key) ? process.env[key] : undefined
    process.env[key] = String(value)
  }
  return () => {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key]
      else process.env[key] = value
    }
  }
}

let interrupt = null // rejects the awaited part of the running cell

async function run (request, count) {
  const { script, isAsync } = compile(String(request.code || ''), request.language, count)
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false })
  if (isAsync) {
    const interrupted = new Promise((resolve, reject) => {
      interrupt = () => reject(new Interrupted('the cell was interrupted while awaiting'))
    })
    try {
      value = await Promise.race([value, interrupted])
    } finally {
      interrupt = null
    }
  }
  return value
}

async function execute (request, count) {
  const restore = withEnvs(request.envs)
  let outcome
  try {
    const value = await run(request, count)
    outcome = value === undefined ? null : { type: 'result', ...resultFields(value) }
  } catch (error) {
    outcome = { type: 'error', ...errorFields(error) }
  } finally {
    restore()
  }
  const marker = `\0${request.token}:\0`
  writeOut(marker)
  writeErr(marker)
  if (outcome) send(outcome)
  send({ type: 'done' })
}

function main () {
  for (const stream of [process.stdout, process.stderr]) { // block when the driver reads slowly
    if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true)
  }
  const cwd = process.cwd()
  globals(cwd)
  process.on('SIGINT', () => { if (interrupt) interrupt() })
  process.on('unhandledRejection', (reason) => {
    writeErr(`Unhandled promise rejection: ${reason instanceof Error ? cleanStack(reason.stack) : util.inspect(reason)}\n`)
  })
  process.on('uncaughtException', (error) => {
    writeErr(`Uncaught ${error instanceof Error ? cleanStack(error.stack) : util.inspect(error)}\n`)
  })
  let count = 0
  process.on('message', (request) => {
    count += 1
    execute(request, count).catch((error) => writeErr(`corral runtime: ${error && error.stack}\n`))
  })
  process.on('disconnect', () => process.exit(0)) // the driver is gone
  send({ type: 'ready', typescript: Boolean(ts) })
}

main()

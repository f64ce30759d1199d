'use strict'
/**
 * JavaScript/TypeScript driver: speaks the interpreter wire (docs/interpreter-protocol.md) and keeps one
 * runtime process (js_runtime.js) that owns the context's state.
 *
 * Runs inside the sandbox on the template's node: `node js_driver.js --cwd DIR`; plain Node 18, no npm
 * dependencies (TypeScript comes from the global install, loaded by the runtime). The runtime is a
 * forked child in our process group: the server's SIGINT to the group interrupts its cell while this
 * driver ignores it; if the runtime dies (process.exit(), OOM) the cell ends with `KernelDied` and a
 * fresh runtime is started. Cells run one at a time, in the order they arrive on stdin.
 */

const { fork } = require('child_process')
const crypto = require('crypto')
const fs = require('fs')
const path = require('path')
const readline = require('readline')

const RUNTIME = path.join(__dirname, 'js_runtime.js')
const GLOBAL_MODULES = ['/usr/local/lib/node_modules', '/usr/lib/node_modules']
const MAX_TEXT = 64 * 1024 // UTF-8 bytes of text per stdout/stderr event
const PENDING_MAX = 1 << 20 // characters of output between cells kept for the next cell
const DRAIN_MS = 500 // how long a dead runtime's pipes may take to deliver their last output

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n') // blocking (see blockingStdio): back-pressure
}

/** Make writes to stdout/stderr pipes block, so a slow reader slows the writer instead of filling memory. */
function blockingStdio () {
  for (const stream of [process.stdout, process.stderr]) {
    if (stream._handle && typeof stream._handle.setBlocking === 'function') stream._handle.setBlocking(true)
  }
}

function diag (message) {
  process.stderr.write(`corral driver[${process.pid}]: ${message}\n`)
}

/** Split text into pieces of at most `limit` UTF-8 bytes, never inside a character. */
function * chunks (text, limit = MAX_TEXT) {
  if (text.length * 3 <= limit) {
    yield text
    return
  }
  const data = Buffer.from(text, 'utf8')
  let start = 0
  while (start < data.length) {
    let end = Math.min(start + limit, data.length)
    while (end < data.length && end > start && (data[end] & 0xC0) === 0x80) end-- // a continuation byte
    yield data.toString('utf8', start, end)
    start = end
  }
}

function emitStream (id, name, text) {
  const timestamp = new Date().toISOString()
  for (const piece of chunks(text)) emit({ type: name, text: piece, timestamp, id })
}

/** Finds the marker `\0<token>:<payload>\0` in text fed in arbitrary pieces (see bash_driver.Scanner). */
class Scanner {
  constructor (token) {
    this.opener = `\0${token}:`
    this.held = ''
  }

  /** [output before the marker, payload or null if not seen yet, text after it] */
  feed (piece) {
    const text = this.held + piece
    this.held = ''
    const start = text.indexOf(this.opener)
    if (start >= 0) {
      const end = text.indexOf('\0', start + this.opener.length)
      if (end < 0) {
        this.held = text.slice(start)
        return [text.slice(0, start), null, '']
      }
      return [text.slice(0, start), text.slice(start + this.opener.length, end), text.slice(end + 1)]
    }
    const tail = text.lastIndexOf('\0')
    if (tail >= 0 && tail > text.length - this.opener.length && this.opener.startsWith(text.slice(tail))) {
      this.held = text.slice(tail)
      return [text.slice(0, tail), null, '']
    }
    return [text, null, '']
  }
}

function deathReason (code, signal) {
  if (signal === 'SIGKILL') return 'was killed by SIGKILL (out of memory?)'
  if (signal) return `was killed by ${signal}`
  return `exited with code ${code}`
}

/** One runtime child process and the cell it is running. */
class Runtime {
  constructor (cwd) {
    const nodePath = [...GLOBAL_MODULES.filter((dir) => fs.existsSync(dir)), process.env.NODE_PATH]
    this.child = fork(RUNTIME, [], {
      cwd,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: { ...process.env, NODE_PATH: nodePath.filter(Boolean).join(path.delimiter) },
      execArgv: []
    })
    this.cell = null
    this.pending = []
    this.pendingSize = 0
    this.executions = 0
    this.exited = null // {code, signal} once the process is gone
    this.ended = { stdout: false, stderr: false }
    this.ready = new Promise((resolve, reject) => {
      this.onReady = resolve
      this.onStartFailure = reject
    })
    this.ready.catch(() => {}) // a runtime that dies unawaited is replaced by the next cell
    for (const name of ['stdout', 'stderr']) {
      const stream = this.child[name]
      stream.setEncoding('utf8')
      stream.on('data', (text) => this.feed(name, text))
      stream.on('end', () => { this.ended[name] = true })
    }
    this.child.on('message', (message) => this.onMessage(message))
    this.child.on('error', (error) => diag(`runtime: ${error.message}`))
    this.child.on('exit', (code, signal) => this.onExit(code, signal))
  }

  get alive () {
    return this.exited === null
  }

  feed (name, text) {
    const cell = this.cell
    if (!cell || cell.streamDone[name]) {
      this.keep(name, text)
      return
    }
    const [out, payload, rest] = cell.scanners[name].feed(text)
    if (out) emitStream(cell.id, name, out)
    if (payload !== null) {
      cell.streamDone[name] = true
      if (rest) this.keep(name, rest)
      this.maybeFinish()
    }
  }

  keep (name, text) {
    if (this.pendingSize + text.length > PENDING_MAX) {
      diag(`dropping ${text.length} characters of output produced between cells`)
      return
    }
    this.pending.push([name, text])
    this.pendingSize += text.length
  }

  onMessage (message) {
    if (message.type === 'ready') {
      this.onReady()
    } else if (this.cell && (message.type === 'result' || message.type === 'error')) {
      this.cell.outcomes.push(message)
    } else if (this.cell && message.type === 'done') {
      this.cell.done = true
      this.maybeFinish()
    }
  }

  maybeFinish () {
    const cell = this.cell
    if (!cell || !cell.done || !cell.streamDone.stdout || !cell.streamDone.stderr) return
    for (const outcome of cell.outcomes) emit({ ...outcome, id: cell.id })
    this.finish()
  }

  finish () {
    const cell = this.cell
    this.cell = null
    emit({ type: 'end_of_execution', id: cell.id })
    cell.resolve()
  }

  onExit (code, signal) {
    this.exited = { code, signal }
    this.onStartFailure(new Error(`the JavaScript runtime ${deathReason(code, signal)} while starting`))
    if (!this.cell) return
    // let the pipes deliver what the runtime wrote before it died, but not wait for orphans holding them
    const started = Date.now()
    const settle = () => {
      if (!(this.ended.stdout && this.ended.stderr) && Date.now() - started < DRAIN_MS) {
        setTimeout(settle, 20)
        return
      }
      const cell = this.cell
      if (!cell) return
      for (const outcome of cell.outcomes) emit({ ...outcome, id: cell.id })
      if (!cell.outcomes.some((o) => o.type === 'error')) {
        const value = `the JavaScript runtime ${deathReason(code, signal)} while running this cell; a new ` +
          'runtime is started for the next one, so all variables and state are lost'
        emit({ type: 'error', id: cell.id, name: 'KernelDied', value, traceback: `KernelDied: ${value}` })
      }
      this.finish()
    }
    settle()
  }

  /** Run one cell; resolves after its `end_of_execution`. */
  execute (request) {
    return new Promise((resolve) => {
      const token = crypto.randomBytes(8).toString('hex')
      const id = String(request.id ?? '')
      this.executions += 1
      emit({ type: 'number_of_executions', execution_count: this.executions, id })
      for (const [name, text] of this.pending) emitStream(id, name, text)
      this.pending = []
      this.pendingSize = 0
      this.cell = {
        id,
        resolve,
        done: false,
        outcomes: [],
        streamDone: { stdout: false, stderr: false },
        scanners: { stdout: new Scanner(token), stderr: new Scanner(token) }
      }
      this.child.send({
        code: String(request.code ?? ''), envs: request.envs || {}, language: request.language || null, token
      })
    })
  }

  kill () {
    if (this.alive) this.child.kill('SIGKILL')
  }
}

class Driver {
  constructor (cwd) {
    this.cwd = cwd
    this.runtime = new Runtime(cwd)
    this.queue = []
    this.busy = false
    this.closing = false
  }

  submit (request) {
    this.queue.push(request)
    this.pump()
  }

  close () {
    this.closing = true
    this.pump()
  }

  async pump () {
    if (this.busy) return
    this.busy = true
    while (this.queue.length) await this.execute(this.queue.shift())
    this.busy = false
    if (this.closing) {
      this.runtime.kill()
      process.exit(0)
    }
  }

  /** A fresh runtime in place of the dead one, taking over the output the dead one left between cells. */
  replaceRuntime () {
    const dead = this.runtime
    this.runtime = new Runtime(this.cwd)
    for (const [name, text] of dead.pending) this.runtime.keep(name, text)
  }

  async execute (request) {
    const id = String(request.id ?? '')
    const gone = this.runtime.exited // it died between cells (a timer called process.exit(), OOM)
    if (gone) this.replaceRuntime()
    try {
      await this.runtime.ready
    } catch (error) {
      emit({ type: 'error', id, name: 'KernelDied', value: error.message, traceback: `KernelDied: ${error.message}` })
      emit({ type: 'end_of_execution', id })
      return
    }
    if (gone) {
      this.runtime.keep('stderr', `[the JavaScript runtime ${deathReason(gone.code, gone.signal)} after the ` +
        'previous cell; this cell runs in a new runtime, without the earlier state]\n')
    }
    await this.runtime.execute(request)
    if (!this.runtime.alive) this.replaceRuntime() // eagerly, so the next cell does not wait
  }
}

function parseCwd (argv) {
  const at = argv.indexOf('--cwd')
  return at >= 0 && argv[at + 1] ? argv[at + 1] : (process.env.HOME || '/')
}

async function main () {
  process.on('SIGINT', () => {}) // interrupts are for the runtime; see the module comment
  blockingStdio()
  process.stdout.on('error', () => process.exit(0)) // nobody reads us any more
  const cwd = parseCwd(process.argv.slice(2))
  try {
    process.chdir(cwd)
  } catch (error) {
    diag(`cannot use ${cwd} as working directory: ${error.message}`)
    process.exit(2)
  }
  const driver = new Driver(cwd)
  try {
    await driver.runtime.ready
  } catch (error) {
    diag(error.message)
    process.exit(1)
  }
  emit({ type: 'ready' })
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  lines.on('line', (line) => {
    if (!line.trim()) return
    let request
    try {
      request = JSON.parse(line)
    } catch (_) {
      diag(`ignoring a line that is not JSON: ${line.slice(0, 200)}`)
      return
    }
    if (!request || request.op !== 'execute') {
      diag(`ignoring an unknown request: ${line.slice(0, 200)}`)
      return
    }
    driver.submit(request)
  })
  lines.on('close', () => driver.close())
}

main()

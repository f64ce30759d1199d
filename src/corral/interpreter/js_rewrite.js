'use strict'
/**
 * Rewrites one cell of JavaScript so that its top-level declarations outlive the cell.
 *
 * Pure (no I/O); used by js_runtime.js with the TypeScript compiler API as the parser. Every cell runs
 * as a classic script in the same global scope, where a top-level `let`/`const`/`class` would be a
 * lexical binding that the next cell cannot redeclare. So:
 * - a cell without top-level `await` keeps its shape: `let`/`const` become `var` (same columns) and
 *   `class C {}` becomes `var C = class C {};`, so the script's completion value is the result;
 * - a cell with top-level `await` becomes `var <names>; (async () => { ... })()`, its declarations
 *   turned into assignments to those globals, its functions published on `globalThis`, and its last
 *   expression statement returned. The first line keeps its number, so stack traces stay readable.
 * A cell that does not parse is returned unchanged, so V8 reports the syntax error on the user's code.
 */

function bindingNames (ts, name, into) {
  if (ts.isIdentifier(name)) {
    into.push(name.text)
  } else {
    for (const element of name.elements) {
      if (!ts.isOmittedExpression(element)) bindingNames(ts, element.name, into)
    }
  }
  return into
}

function hasTopLevelAwait (ts, sourceFile) {
  let found = false
  const visit = (node) => {
    if (found || ts.isFunctionLike(node)) return
    if (ts.isAwaitExpression(node) || (ts.isForOfStatement(node) && node.awaitModifier)) {
      found = true
      return
    }
    ts.forEachChild(node, visit)
  }
  ts.forEachChild(sourceFile, visit)
  return found
}

function hasModifiers (node) {
  return Boolean(node.modifiers && node.modifiers.length)
}

/** The edits for a cell that runs as a plain script. */
function scriptEdits (ts, sourceFile, edits) {
  for (const statement of sourceFile.statements) {
    if (ts.isVariableStatement(statement) && !hasModifiers(statement)) {
      const keyword = statement.declarationList.getFirstToken(sourceFile)
      const text = keyword.getText(sourceFile)
      if (text === 'let' || text === 'const') {
        edits.push([keyword.getStart(sourceFile), keyword.end, 'var'.padEnd(text.length)])
      }
    } else if (ts.isClassDeclaration(statement) && statement.name && !hasModifiers(statement)) {
      edits.push([statement.getStart(sourceFile), statement.getStart(sourceFile), `var ${statement.name.text} = `])
      edits.push([statement.end, statement.end, ';'])
    }
  }
}

/** The edits for a cell that runs inside an async function; returns the names to declare outside. */
function asyncEdits (ts, sourceFile, edits) {
  const names = []
  const published = []
  const statements = sourceFile.statements
  statements.forEach((statement, index) => {
    const start = statement.getStart(sourceFile)
    if (ts.isVariableStatement(statement) && !hasModifiers(statement)) {
      const isVar = !(statement.declarationList.flags & (ts.NodeFlags.Let | ts.NodeFlags.Const))
      const assignments = []
      for (const declaration of statement.declarationList.declarations) {
        bindingNames(ts, declaration.name, names)
        if (declaration.initializer) {
          const target = declaration.name.getText(sourceFile)
          assignments.push(`(${target} = ${declaration.initializer.getText(sourceFile)})`)
        } else if (!isVar) { // `let x;` resets x, `var x;` does not
          assignments.push(`(${declaration.name.getText(sourceFile)} = undefined)`)
        }
      }
      edits.push([start, statement.end, assignments.length ? assignments.join(', ') + ';' : ';'])
    } else if (ts.isClassDeclaration(statement) && statement.name && !hasModifiers(statement)) {
      names.push(statement.name.text)
      edits.push([start, start, `${statement.name.text} = `])
      edits.push([statement.end, statement.end, ';'])
    } else if (ts.isFunctionDeclaration(statement) && statement.name && !hasModifiers(statement)) {
      published.push(statement.name.text)
    } else if (ts.isExpressionStatement(statement) && index === statements.length - 1) {
      edits.push([start, statement.end, `return (${statement.expression.getText(sourceFile)});`])
    }
  })
  return { names: [...new Set(names)], published }
}

function applyEdits (source, edits) {
  let out = source
  for (const [start, end, text] of edits.sort((a, b) => b[0] - a[0] || b[1] - a[1])) {
    out = out.slice(0, start) + text + out.slice(end)
  }
  return out
}

/**
 * Rewrite `source` (JavaScript) with the TypeScript module `ts`.
 * Returns {code, isAsync}: `code` is a script; if `isAsync`, its completion value is a promise of the result.
 */
function rewrite (ts, source) {
  const sourceFile = ts.createSourceFile('cell.js', source, ts.ScriptTarget.Latest, true, ts.ScriptKind.JS)
  if (sourceFile.parseDiagnostics && sourceFile.parseDiagnostics.length) return { code: source, isAsync: false }
  const edits = []
  if (!hasTopLevelAwait(ts, sourceFile)) {
    scriptEdits(ts, sourceFile, edits)
    return { code: applyEdits(source, edits), isAsync: false }
  }
  const { names, published } = asyncEdits(ts, sourceFile, edits)
  const declare = names.length ? `var ${names.join(', ')}; ` : ''
  const publish = published.map((name) => `globalThis.${name} = ${name}; `).join('')
  return { code: `${declare}(async () => { ${publish}${applyEdits(source, edits)}\n})()`, isAsync: true }
}

module.exports = { rewrite }

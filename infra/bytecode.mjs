// Runs infra/compile_bytecode.py inside Pyodide's CPython, for a build machine whose
// own Python is not the Lambda runtime's version (a pyc is only valid for the minor
// version that wrote it). The pyodide package is pinned in package.json.
//
//   node infra/bytecode.mjs TREE PREFIX TARGET_VERSION
//
// TREE is mounted at PREFIX (where it sits on Lambda), so the paths compiled into the
// code objects are the deployed ones. Prints the script's JSON report on stdout.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { loadPyodide } from "pyodide";

const [tree, prefix, target] = process.argv.slice(2);
if (!tree || !prefix || !target) {
  console.error("usage: node infra/bytecode.mjs TREE PREFIX TARGET_VERSION");
  process.exit(2);
}
const script = readFileSync(new URL("./compile_bytecode.py", import.meta.url), "utf8");
// A fixed hash seed: set and frozenset constants then marshal in the same order every build.
const pyodide = await loadPyodide({ env: { PYTHONHASHSEED: "0" }, stdout: () => {}, stderr: () => {} });
pyodide.FS.mkdirTree(prefix);
pyodide.FS.mount(pyodide.FS.filesystems.NODEFS, { root: resolve(tree) }, prefix);
pyodide.globals.set("argv", pyodide.toPy([prefix, prefix, target]));
pyodide.globals.set("source", script);
const code = pyodide.runPython(`
import contextlib, io, sys
namespace = {"__name__": "compile_bytecode"}
exec(compile(source, "compile_bytecode.py", "exec"), namespace)
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = namespace["main"](list(argv))
report = out.getvalue()
(status, report)
`).toJs();
process.stdout.write(code[1]);
process.exit(code[0]);

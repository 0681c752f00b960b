#!/usr/bin/env bash
# Install the real agent CLIs that the presets are tested against, inside this
# directory only: npm packages from package-lock.json into agents/node_modules,
# Aider (which pins many dependencies of its own) into agents/aider-venv.
# Idempotent: a part whose inputs did not change since its last install is skipped.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
aider_version="0.86.2"
python="${PYTHON:-python3}"

stamp_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

npm_stamp="$(stamp_of "$here/package.json" "$here/package-lock.json")"
if [ "$(cat "$here/node_modules/.orchestrate-stamp" 2>/dev/null)" != "$npm_stamp" ]; then
    echo "agents: npm ci (claude, codex, gemini)"
    npm ci --prefix "$here" --no-audit --no-fund --loglevel=error
    echo "$npm_stamp" > "$here/node_modules/.orchestrate-stamp"
fi

aider_stamp="aider-chat==$aider_version $("$python" -c 'import sys; print(sys.version_info[:2])')"
if [ "$(cat "$here/aider-venv/.orchestrate-stamp" 2>/dev/null)" != "$aider_stamp" ]; then
    echo "agents: aider-chat $aider_version into aider-venv"
    rm -rf "$here/aider-venv"
    "$python" -m venv "$here/aider-venv"
    log="$(mktemp)"
    "$here/aider-venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "aider-chat==$aider_version" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
    rm -f "$log"
    echo "$aider_stamp" > "$here/aider-venv/.orchestrate-stamp"
fi

# a package whose install script did not run leaves a stub: fail here, not in a test
bin="$here/node_modules/.bin"
HOME="$(mktemp -d)" && trap 'rm -rf "$HOME"' EXIT && export HOME
for cli in claude codex gemini; do
    "$bin/$cli" --version </dev/null >/dev/null 2>&1 || { echo "agents: $cli --version failed" >&2; exit 1; }
done
"$here/aider-venv/bin/aider" --version </dev/null >/dev/null
echo "agents: claude $("$bin/claude" --version </dev/null 2>/dev/null | cut -d' ' -f1)," \
     "codex $("$bin/codex" --version </dev/null 2>/dev/null | cut -d' ' -f2)," \
     "gemini $("$bin/gemini" --version </dev/null 2>/dev/null)," \
     "$("$here/aider-venv/bin/aider" --version </dev/null)"

#!/bin/sh
# compile-bytecode.sh DIR PY_VERSION: compile every module under DIR to bytecode, when the
# interpreter that runs this ($PYTHON, default python3) is the runtime's version.
#
# Why: Lambda mounts the function code (/var/task) and layers (/opt) read-only, so a
# package shipped without __pycache__ is compiled from source again on every cold start,
# before a single byte of the model moves. Bytecode is specific to a Python minor
# version: the SAM build image of the function's runtime (`sam build --use-container`)
# has that interpreter; a build with another one (a laptop, the tests) ships source only
# and says so. `unchecked-hash`: a deployment never changes after the build, so Python
# need not compare each source file's mtime (a zip's mtimes are not kept exactly anyway).
set -eu
dir=$1 want=$2
python=${PYTHON:-python3}
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$have" != "$want" ]; then
    echo "compile-bytecode: $python is $have, the runtime is $want: $dir ships source only" >&2
    exit 0
fi
"$python" -m compileall -q -j 0 --invalidation-mode unchecked-hash "$dir" >/dev/null ||
    echo "compile-bytecode: some files under $dir do not compile; they ship as source" >&2

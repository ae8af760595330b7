#!/usr/bin/env bash
# Set up (or reuse) the virtual environment from requirements.txt (--test: requirements-test.txt), then run a ddrl job with spark-submit.
#
#   ./spark-submit.sh [--master URL] [--ship-env] [other spark-submit options] jobs/JOB.py [job options]
#   ./spark-submit.sh --test [pytest options]        # the whole test suite, same environment
#
# The master defaults to $DDRL_MASTER, else local[*]; any master works: spark://HOST:7077, yarn, k8s://...
# The venv lives in $DDRL_VENV (default .venv) and holds ddrl itself (editable).  Jobs need requirements.txt (lean:
# torch, pyspark, gymnasium with MuJoCo); --test adds requirements-test.txt (Atari, MinAtar, EnvPool, MLflow,
# notebooks, Connect, venv-pack, pytest).  Either is reinstalled whenever it or pyproject.toml changes.
# Off local mode, the ddrl package is zipped into build/ddrl-package.zip on every run and shipped with --py-files.
# --ship-env (or DDRL_SHIP_ENV=1) also ships the whole venv (venv-pack, installed on first use; build/ddrl-env.tar.gz,
# rebuilt when the venv's requirements change) as --archives ...#environment and runs executors' Python from it; without it,
# executors run $DDRL_VENV/bin/python, which must then exist at the same path on every worker.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${DDRL_VENV:-$ROOT/.venv}
export DDRL_STARTED_AT=${DDRL_STARTED_AT:-$(date +%s.%N)}

# ensure_venv FILE: install FILE (requirements.txt, or requirements-test.txt, which includes it) into the venv
# unless the venv already holds that set or one that includes it.  The stamp names what was installed last.
set_hash() { cat "$@" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1; }
ensure_venv() {
  local file=$1 stamp="$VENV/.requirements.sha256" have lean full
  lean=$(set_hash "$ROOT/requirements.txt")
  full=$(set_hash "$ROOT/requirements.txt" "$ROOT/requirements-test.txt")
  have=$(cat "$stamp" 2>/dev/null || true)
  if [[ -x "$VENV/bin/python" && ( "$have" == "$full" || ( "$have" == "$lean" && "$file" == requirements.txt ) ) ]]; then
    return
  fi
  local python=${DDRL_PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "ddrl: setting up $VENV from $file (once per change of it) ..." >&2
  [[ -x "$VENV/bin/python" ]] || "$python" -m venv "$VENV"
  # --no-compile: Python writes bytecode for the modules it imports, instead of pip for every module of every
  # package (225 MB for the first command's set, most of it never imported).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile -r "$ROOT/$file" >&2
  # ddrl itself, editable: `import ddrl` works from any directory with this venv's Python.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT" >&2
  if [[ "$file" == requirements.txt ]]; then echo "$lean" > "$stamp"; else echo "$full" > "$stamp"; fi
}

# Class-data sharing for the driver's JVM (JDK 13+): the classes Spark loads at start-up, parsed and verified once
# into an archive next to the venv, mapped by every later run (3.4 s less start-up here, BENCHMARKS.md part 14).
# The first job run writes the archive at its exit; a new JDK or pyspark (another archive name) writes a new one.
# An archive that does not fit (another classpath) is ignored, silently. DDRL_JVM_CDS=0 turns it off.
jvm_class_sharing() {
  [[ "${DDRL_JVM_CDS:-1}" == 1 ]] || return 0
  local java jars key
  java=$(readlink -f "$(command -v java)")
  jars=$(ls -d "$VENV"/lib/python*/site-packages/pyspark/jars 2>/dev/null | head -1)
  [[ -n "$jars" ]] || return 0
  key=$(echo "$java $(stat -c %Y "$java") $(stat -c %Y "$jars")" | sha256sum | cut -c1-16)
  cds_archive="$VENV/jvm-classes-$key.jsa"
  if [[ -f "$cds_archive" ]]; then
    export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }-XX:SharedArchiveFile=$cds_archive -Xshare:auto -Xlog:cds=off,cds+dynamic=off"
  elif [[ "${1:-}" == write ]]; then
    cds_writing="$cds_archive.$$"  # renamed into place once the JVM has written it at exit
    export SPARK_SUBMIT_OPTS="${SPARK_SUBMIT_OPTS:+$SPARK_SUBMIT_OPTS }-XX:ArchiveClassesAtExit=$cds_writing -Xlog:cds=error,cds+dynamic=error"
  fi
}

command -v java >/dev/null || { echo "ddrl: Java 17 is needed for Spark (java not found on PATH)" >&2; exit 1; }
if [[ "${1:-}" == "--test" ]]; then ensure_venv requirements-test.txt; else ensure_venv requirements.txt; fi
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

if [[ "${1:-}" == "--test" ]]; then
  shift
  jvm_class_sharing  # reads an archive a job wrote; the suite's many JVMs never write one
  exec "$VENV/bin/python" -m pytest "$@"
fi

master=${DDRL_MASTER:-local[*]}
ship_env=${DDRL_SHIP_ENV:-0}
deploy_mode=client
py_files=""
submit_args=()
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --ship-env) ship_env=1; shift ;;
    --py-files) py_files=$2; shift 2 ;;
    --py-files=*) py_files=${1#--py-files=}; shift ;;
    --deploy-mode) deploy_mode=$2; submit_args+=("$1" "$2"); shift 2 ;;
    --deploy-mode=*) deploy_mode=${1#--deploy-mode=}; submit_args+=("$1"); shift ;;
    --verbose|--supervise) submit_args+=("$1"); shift ;;
    *) [[ $# -ge 2 ]] || { echo "ddrl: $1 needs a value (spark-submit options are --name value; ./spark-submit.sh --help)" >&2; exit 2; }
       submit_args+=("$1" "$2"); shift 2 ;;
  esac
done
[[ $# -gt 0 ]] || { sed -n '2,14p' "$0" >&2; exit 2; }

# The ddrl package as a zip for --py-files (pure Python; torch and the rest come from the environment).
build_package() {
  mkdir -p "$ROOT/build"
  "$VENV/bin/python" - "$ROOT" "$ROOT/build/ddrl-package.zip" <<'PY'
import os, sys, zipfile
root, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out + ".tmp", "w", zipfile.ZIP_DEFLATED) as archive:
    for folder, dirs, files in os.walk(os.path.join(root, "ddrl")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py") or name.endswith(".typed"):
                path = os.path.join(folder, name)
                archive.write(path, os.path.relpath(path, root))
os.replace(out + ".tmp", out)
PY
}

# The whole venv as a relocatable archive (venv-pack), rebuilt only when requirements.txt changed.  The JVM
# jars of pyspark, torch's C++ headers and tests are left out: executors' Python does not use them.
build_env_archive() {
  local archive="$ROOT/build/ddrl-env.tar.gz" stamp="$ROOT/build/ddrl-env.sha256" wanted
  wanted=$(cat "$VENV/.requirements.sha256")
  if [[ -f "$archive" && "$(cat "$stamp" 2>/dev/null)" == "$wanted" ]]; then
    return
  fi
  mkdir -p "$ROOT/build"
  echo "ddrl: packing $VENV into $archive (once per set of requirements) ..." >&2
  rm -f "$archive" "$stamp"
  [[ -x "$VENV/bin/venv-pack" ]] || "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "venv-pack>=0.2" >&2
  "$VENV/bin/venv-pack" --prefix "$VENV" --output "$archive" --compress-level 1 --quiet \
    --exclude 'lib/python*/site-packages/pyspark/jars/*' \
    --exclude 'lib/python*/site-packages/torch/include/*' \
    --exclude 'lib/python*/site-packages/torch/test/*' \
    --exclude '*/__pycache__/*'
  echo "$wanted" > "$stamp"
}

if [[ "$master" != local* ]]; then
  build_package
  py_files="$ROOT/build/ddrl-package.zip${py_files:+,$py_files}"
  if [[ "$ship_env" == 1 ]]; then
    build_env_archive
    export PYSPARK_PYTHON=./environment/bin/python
    submit_args+=(--archives "$ROOT/build/ddrl-env.tar.gz#environment"
                  --conf spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python
                  --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python)
  fi
  if [[ "$deploy_mode" == cluster ]]; then
    unset PYSPARK_DRIVER_PYTHON  # the driver runs on the cluster: it must not look for this machine's path
  fi
fi
[[ -z "$py_files" ]] || submit_args+=(--py-files "$py_files")

# conf/spark-defaults.conf as --conf pairs: a --properties-file would replace the cluster's own spark-defaults.conf,
# whose settings these are merged with instead (and an option given on this command line wins over both).
ddrl_defaults=()
while read -r key value; do
  [[ -z "$key" || "$key" == \#* ]] || ddrl_defaults+=(--conf "$key=$value")
done < "$ROOT/conf/spark-defaults.conf"

cds_writing=""
jvm_class_sharing write
submit=("$VENV/bin/spark-submit"
  --master "$master"
  "${ddrl_defaults[@]}"
  --driver-java-options "-Dlog4j2.configurationFile=file:$ROOT/conf/log4j2.properties"
  ${submit_args[@]+"${submit_args[@]}"}
  "$@")
[[ -n "$cds_writing" ]] || exec "${submit[@]}"
status=0
"${submit[@]}" || status=$?
[[ -s "$cds_writing" ]] && mv -f "$cds_writing" "$cds_archive"
rm -f "$cds_writing"
exit "$status"

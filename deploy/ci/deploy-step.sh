#!/usr/bin/env bash
# One CI pipeline step: roll IMAGE out to a service with rctl and let the exit code decide
# the job: 0 shipped, 3 rctl rolled it back by itself (the job fails, production is back on
# the previous revision), 4 timed out (left as it is: a person looks), anything else an error.
#
# Usage: deploy-step.sh SERVICE_FILE IMAGE [WHY]
#   SERVICE_FILE  the service's rctl file (checked into the repo); its `image = ...` line is
#                 replaced by IMAGE for this run
#   IMAGE         the reference the build step pushed, e.g. registry:5000/team/web:$GIT_SHA
#   WHY           recorded with the revision (rctl rollout history); default: $CI_COMMIT_TITLE
# Environment: RCTL_ADDR and RCTL_TLS_DIR/RCTL_TLS_NAME (the job's client certificate: its
# CN is recorded as who made the revision). TIMEOUT (default 10m).
set -euo pipefail

file=${1:?usage: deploy-step.sh SERVICE_FILE IMAGE [WHY]}
image=${2:?usage: deploy-step.sh SERVICE_FILE IMAGE [WHY]}
why=${3:-${CI_COMMIT_TITLE:-deploy $image}}
timeout=${TIMEOUT:-10m}

rendered=$(mktemp --suffix=.toml)
trap 'rm -f "$rendered"' EXIT
# Only the top-level image line: a file without one is a mistake worth failing on.
grep -q '^image *= *' "$file" || { echo "error: $file has no top-level image = line" >&2; exit 2; }
sed "s|^image *= *.*|image = \"$image\"|" "$file" >"$rendered"

name=$(sed -n 's/^name *= *"\(.*\)"/\1/p' "$rendered" | head -n1)
echo "deploying $image to $name (why: $why)"

set +e
rctl apply -f "$rendered" --wait --timeout "$timeout" -m "$why"
code=$?
set -e

case $code in
  0) echo "shipped: $name runs $image" ;;
  3) echo "rolled back: $image failed its checks; $name is back on the previous revision" >&2 ;;
  4) echo "timed out after $timeout: the rollout is left as it is (see: rctl ps --service $name)" >&2 ;;
  *) echo "rctl failed (exit $code)" >&2 ;;
esac
rctl rollout history "$name" || true
exit $code

#!/usr/bin/env bash
# A CI pipeline's release stage with a self-judging canary: build → push → canary with rctl →
# pass or fail the job by rctl's exit code alone, no polling of its own.
#
#   0  every [canary] step passed, the stable tasks were replaced: the job passes
#   3  rctl rolled the canary back by itself: print `rctl rollout explain` (the figures and
#      the rule that decided) and fail; production never left the stable revision
#   4  timed out: abort the canary (weights to 0, canary tasks stopped) and fail
#   1  error, e.g. the image is not in the registry (nothing changed); 2 bad usage
#
# Usage: canary-pipeline.sh SERVICE IMAGE
#   SERVICE  a running rctl service with a [canary] section
#   IMAGE    the reference to release, e.g. registry:5000/team/web:$GIT_SHA
# Environment:
#   BUILD_CMD  shell command that builds IMAGE and pushes it (rctl has no build/push: use the
#              pipeline's image tool, e.g. `docker build -t "$IMAGE" . && docker push "$IMAGE"`);
#              unset: IMAGE is already in the registry
#   TIMEOUT    how long the canary may take (default 10m)
#   RCTL       the rctl binary (default: rctl on PATH); RCTL_ADDR / RCTL_TLS_DIR / RCTL_TLS_NAME
#              as for any rctl command (the client certificate's name is recorded as who
#              made the revision)
#   RESULT     where the rollout's final status JSON goes (default: canary-result.json)
set -euo pipefail

service=${1:?usage: canary-pipeline.sh SERVICE IMAGE}
image=${2:?usage: canary-pipeline.sh SERVICE IMAGE}
timeout=${TIMEOUT:-10m}
rctl=${RCTL:-rctl}
result=${RESULT:-canary-result.json}
export IMAGE=$image

if [[ -n ${BUILD_CMD:-} ]]; then
    echo "== build and push $image"
    bash -c "$BUILD_CMD"
fi

echo "== canary of $image on $service"
set +e
"$rctl" rollout start "$service" --image "$image" --canary --wait --timeout "$timeout" \
    -m "canary ${CI_COMMIT_SHA:-$image}" -o json >"$result"
code=$?
set -e
# The status document rctl wrote (also on failure): state, step, weights, reason.
cat "$result"

case $code in
    0)
        echo "== released: $service runs $image"
        ;;
    3)
        echo "== rolled back by rctl: $image failed its checks; $service stays on its stable revision" >&2
        "$rctl" rollout explain "$service" || true
        ;;
    4)
        echo "== canary still undecided after $timeout: aborting it" >&2
        "$rctl" rollout abort "$service" || true
        ;;
    *)
        echo "== rctl failed (exit $code); nothing was released" >&2
        ;;
esac
exit $code

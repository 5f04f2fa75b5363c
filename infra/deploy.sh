#!/usr/bin/env bash
# Deploy Captionizer to Azure Container Apps: infra/deploy.sh <dev|prod>
#
# Needs: az, logged in (az login; az account set --subscription ...), with Bicep (az bicep
# install); docker with buildx, because the Dockerfiles use BuildKit cache mounts, which
# `az acr build` does not support (Azure/acr#721).
# Required environment: CAPTIONIZER_API_KEY_HASHES, CAPTIONIZER_WEBHOOK_SECRETS (written to Key
# Vault; the parameters file reads them, so they never appear on a command line).
# Optional: RESOURCE_GROUP (default rg-captionizer-<env>), IMAGE_TAG (default: the git commit),
# MODEL_ID, MODEL_REVISION (the checkpoint baked into the GPU worker image),
# WHAT_IF=1 (show what would change; build and deploy nothing).
#
# Two passes: the first creates everything but the apps (their images need the registry), then
# the images are pushed, then the second pass creates the apps and Front Door's route.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 <dev|prod>" >&2
  exit 2
fi
env_name=$1
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
params="$root/infra/env/$env_name.bicepparam"
if [[ ! -f $params ]]; then
  echo "no parameters file: $params" >&2
  exit 2
fi

: "${CAPTIONIZER_API_KEY_HASHES:?set CAPTIONIZER_API_KEY_HASHES (SHA-256 hex digests; python -m api.http.auth new-key)}"
: "${CAPTIONIZER_WEBHOOK_SECRETS:?set CAPTIONIZER_WEBHOOK_SECRETS (whsec_ values, comma-separated)}"
export CAPTIONIZER_API_KEY_HASHES CAPTIONIZER_WEBHOOK_SECRETS
IMAGE_TAG=${IMAGE_TAG:-$(git -C "$root" rev-parse --short=12 HEAD)}
export IMAGE_TAG
resource_group=${RESOURCE_GROUP:-rg-captionizer-$env_name}
# The group lives where its resources do: the region named in the parameters file.
location=$(sed -n "s/^param location = '\([a-z0-9]*\)'.*/\1/p" "$params")
if [[ -z $location ]]; then
  echo "no \"param location = '...'\" line in $params" >&2
  exit 2
fi

deployment() {  # deployment <create|what-if> <name> <deploy apps: true|false>
  DEPLOY_APPS=$3 az deployment group "$1" --resource-group "$resource_group" --name "$2" \
    --parameters "$params" --only-show-errors
}

echo "== $env_name: resource group $resource_group in $location, images tagged $IMAGE_TAG"
for namespace in Microsoft.App Microsoft.Cache Microsoft.Cdn Microsoft.ContainerRegistry \
  Microsoft.Insights Microsoft.KeyVault Microsoft.ManagedIdentity Microsoft.Network \
  Microsoft.OperationalInsights; do
  az provider register --namespace "$namespace" --only-show-errors >/dev/null
done
az group create --name "$resource_group" --location "$location" --only-show-errors >/dev/null

if [[ -n ${WHAT_IF:-} ]]; then
  deployment what-if captionizer true
  exit 0
fi

echo "== pass 1: registry, identity, Key Vault, Redis, environment, Front Door"
deployment create captionizer-base false >/dev/null
registry=$(az deployment group show --resource-group "$resource_group" --name captionizer-base \
  --query properties.outputs.registryServer.value --output tsv)

echo "== images -> $registry"
az acr login --name "${registry%%.*}" --only-show-errors
build() {  # build <Dockerfile> <repository> [docker build options...]
  docker buildx build --platform linux/amd64 --push --file "$root/$1" \
    --tag "$registry/$2:$IMAGE_TAG" "${@:3}" "$root"
}
build Dockerfile.api captionizer-api
build Dockerfile.worker captionizer-worker --build-arg TORCH_VARIANT=cuda \
  --build-arg "MODEL_ID=${MODEL_ID:-microsoft/git-base-textcaps}" --build-arg "MODEL_REVISION=${MODEL_REVISION:-}"
# The webhook worker never loads the model: the CPU image with only the embedded one.
build Dockerfile.worker captionizer-worker-cpu --build-arg TORCH_VARIANT=cpu --build-arg MODEL_ID=

echo "== pass 2: the apps and Front Door's route"
deployment create captionizer true >/dev/null
az deployment group show --resource-group "$resource_group" --name captionizer \
  --query "{api: properties.outputs.apiUrl.value, frontDoorId: properties.outputs.frontDoorId.value}" --output table

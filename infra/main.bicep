// Captionizer on Azure Container Apps: the API behind Front Door, a caption worker on a
// serverless GPU scaled 0..N by KEDA on the Celery queue, a webhook worker, Azure Managed
// Redis, Key Vault, a registry pulled with a managed identity, and Log Analytics.
// Deploy with infra/deploy.sh; see infra/README.md for regions, quotas and cost.
targetScope = 'resourceGroup'

// --- where and what --------------------------------------------------------------------------
@description('Short environment name used in resource names, e.g. dev or prod.')
@minLength(2)
@maxLength(8)
param environmentName string

@description('Region of every regional resource. Serverless GPUs exist only in some regions (infra/README.md).')
param location string = resourceGroup().location

@description('Serverless GPU of the caption worker: one NVIDIA T4 or one A100 per replica.')
@allowed([
  'Consumption-GPU-NC8as-T4'
  'Consumption-GPU-NC24-A100'
])
param gpuProfileType string = 'Consumption-GPU-NC8as-T4'

@description('Tag of the three images in the registry (deploy.sh pushes them).')
param imageTag string

@description('false on the first run: create the registry and the rest, but no apps yet (their images do not exist).')
param deployApps bool = true

// --- scale ------------------------------------------------------------------------------------
@description('Most GPU replicas of the caption worker (each holds one GPU; serverless GPU quota caps this too).')
@minValue(1)
@maxValue(30)
param captionWorkerMaxReplicas int = 2

@description('Queued caption jobs per GPU replica before KEDA adds another (about two full batches).')
@minValue(1)
param captionJobsPerReplica int = 32

@description('Fewest API replicas; at least one, so the API never cold-starts.')
@minValue(1)
param apiMinReplicas int = 1

@description('Most API replicas.')
@minValue(1)
param apiMaxReplicas int = 5

// --- service tiers ----------------------------------------------------------------------------
@description('Azure Managed Redis SKU (Balanced_B0 is the smallest; see infra/README.md for cost).')
param redisSku string = 'Balanced_B1'

@description('Replicate Redis across two nodes (doubles its price; use in prod).')
param redisHighAvailability bool = true

@description('Container registry SKU.')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Standard'

@description('Front Door tier: Premium adds the managed WAF rule sets (and Private Link).')
@allowed([
  'Standard_AzureFrontDoor'
  'Premium_AzureFrontDoor'
])
param frontDoorSku string = 'Premium_AzureFrontDoor'

@description('WAF mode: Detection only logs, Prevention blocks.')
@allowed([
  'Detection'
  'Prevention'
])
param wafMode string = 'Prevention'

@description('Days Log Analytics keeps logs.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

// --- secrets (written to Key Vault; the apps read them from there) ---------------------------
@description('SHA-256 hex digests of the accepted API keys, comma-separated (python -m api.http.auth hash-key).')
@secure()
@minLength(64)
param apiKeyHashes string

@description('Extra deployment-wide Standard Webhooks secrets (whsec_...), comma-separated, for the operator\'s own verifier; each API key signs with its own secret too (docs/webhooks.md).')
@secure()
@minLength(7)
param webhookSecrets string

param tags object = {}

var prefix = 'captionizer-${environmentName}'
var allTags = union(tags, {
  application: 'captionizer'
  environment: environmentName
})

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    name: 'log-${prefix}'
    location: location
    retentionInDays: logRetentionDays
    tags: allTags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    prefix: prefix
    location: location
    sku: registrySku
    tags: allTags
  }
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    prefix: prefix
    location: location
    tags: allTags
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    name: take('kv-${environmentName}-${uniqueString(resourceGroup().id)}', 24)
    location: location
    readerPrincipalId: registry.outputs.identityPrincipalId
    apiPrincipalId: registry.outputs.apiIdentityPrincipalId
    apiKeyHashes: apiKeyHashes
    webhookSecrets: webhookSecrets
    logAnalyticsId: monitoring.outputs.id
    tags: allTags
  }
}

module redis 'modules/redis.bicep' = {
  name: 'redis'
  params: {
    name: 'redis-${prefix}-${uniqueString(resourceGroup().id)}'
    location: location
    sku: redisSku
    highAvailability: redisHighAvailability
    keyVaultName: vault.outputs.name
    endpointsSubnetId: network.outputs.endpointsSubnetId
    vnetId: network.outputs.vnetId
    apiPrincipalId: registry.outputs.apiIdentityPrincipalId
    tags: allTags
  }
}

module environment 'modules/environment.bicep' = {
  name: 'environment'
  params: {
    name: 'cae-${prefix}'
    location: location
    gpuProfileType: gpuProfileType
    logAnalyticsName: monitoring.outputs.name
    infrastructureSubnetId: network.outputs.appsSubnetId
    tags: allTags
  }
}

module frontDoor 'modules/frontdoor.bicep' = {
  name: 'frontdoor'
  params: {
    prefix: prefix
    sku: frontDoorSku
    wafMode: wafMode
    logAnalyticsId: monitoring.outputs.id
    tags: allTags
  }
}

module apps 'modules/apps.bicep' = if (deployApps) {
  name: 'apps'
  params: {
    prefix: prefix
    location: location
    environmentId: environment.outputs.id
    gpuWorkloadProfileName: environment.outputs.gpuWorkloadProfileName
    gpuProfileType: gpuProfileType
    identityId: registry.outputs.identityId
    apiIdentityId: registry.outputs.apiIdentityId
    forwardedAllowIps: network.outputs.appsSubnetPrefix
    registryServer: registry.outputs.loginServer
    imageTag: imageTag
    keyVaultUri: vault.outputs.uri
    redisHost: redis.outputs.hostName
    redisPort: redis.outputs.port
    frontDoorId: frontDoor.outputs.frontDoorId
    captionWorkerMaxReplicas: captionWorkerMaxReplicas
    captionJobsPerReplica: captionJobsPerReplica
    apiMinReplicas: apiMinReplicas
    apiMaxReplicas: apiMaxReplicas
    tags: allTags
  }
  // The identity must hold AcrPull and Key Vault Secrets User before any app pulls an image
  // or reads a secret; the modules finish only when their role assignments exist.
  dependsOn: [
    registry
    vault
    redis
  ]
}

module frontDoorOrigin 'modules/frontdoor-origin.bicep' = if (deployApps) {
  name: 'frontdoor-origin'
  params: {
    profileName: frontDoor.outputs.profileName
    endpointName: frontDoor.outputs.endpointName
    apiHostName: deployApps ? apps.outputs.apiFqdn : ''
  }
}

@description('Push images here (deploy.sh does).')
output registryServer string = registry.outputs.loginServer

@description('The public URL of the API (through Front Door).')
output apiUrl string = 'https://${frontDoor.outputs.endpointHostName}'

@description('The Front Door id the API checks in X-Azure-FDID.')
output frontDoorId string = frontDoor.outputs.frontDoorId

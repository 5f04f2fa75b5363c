// dev: the smallest of everything; one T4 at most, no Redis replica, Standard Front Door.
// Secrets come from the environment of the shell running infra/deploy.sh, never from git.
using '../main.bicep'

param environmentName = 'dev'
// Serverless GPUs: only some regions (infra/README.md); Sweden Central has T4 and A100.
param location = 'swedencentral'
param gpuProfileType = 'Consumption-GPU-NC8as-T4'
param imageTag = readEnvironmentVariable('IMAGE_TAG', 'latest')
param deployApps = bool(readEnvironmentVariable('DEPLOY_APPS', 'true'))

param captionWorkerMaxReplicas = 1
param captionJobsPerReplica = 32
param apiMinReplicas = 1
param apiMaxReplicas = 2

param redisSku = 'Balanced_B0'
param redisHighAvailability = false
param registrySku = 'Basic'
param frontDoorSku = 'Standard_AzureFrontDoor'
param wafMode = 'Prevention'
param logRetentionDays = 30

param apiKeyHashes = readEnvironmentVariable('CAPTIONIZER_API_KEY_HASHES')
param webhookSecrets = readEnvironmentVariable('CAPTIONIZER_WEBHOOK_SECRETS')

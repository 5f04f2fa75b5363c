// prod: Redis with a replica, Premium Front Door (managed WAF rules) in Prevention mode.
// Secrets come from the environment of the shell running infra/deploy.sh, never from git.
using '../main.bicep'

param environmentName = 'prod'
// Serverless GPUs: only some regions (infra/README.md), and a quota request per subscription.
param location = 'swedencentral'
param gpuProfileType = 'Consumption-GPU-NC8as-T4'
param imageTag = readEnvironmentVariable('IMAGE_TAG')
param deployApps = bool(readEnvironmentVariable('DEPLOY_APPS', 'true'))

param captionWorkerMaxReplicas = 4
param captionJobsPerReplica = 32
param apiMinReplicas = 2
param apiMaxReplicas = 10

param redisSku = 'Balanced_B3'
param redisHighAvailability = true
param registrySku = 'Standard'
param frontDoorSku = 'Premium_AzureFrontDoor'
param wafMode = 'Prevention'
param logRetentionDays = 90

param apiKeyHashes = readEnvironmentVariable('CAPTIONIZER_API_KEY_HASHES')
param webhookSecrets = readEnvironmentVariable('CAPTIONIZER_WEBHOOK_SECRETS')

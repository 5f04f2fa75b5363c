// The three container apps: the API (external ingress, Front Door in front), the caption
// worker (serverless GPU, 0..N replicas by queue length) and the webhook worker.
// Every app pulls with the user-assigned identity and reads its secrets from Key Vault.
param prefix string
param location string
param environmentId string
@description('Name of the environment\'s serverless GPU workload profile.')
param gpuWorkloadProfileName string
@description('Type of that profile; sizes the caption worker\'s container.')
param gpuProfileType string
@description('Resource id of the workers\' user-assigned identity (AcrPull, Key Vault Secrets User).')
param identityId string
@description('Resource id of the API\'s identity (AcrPull; reads redis-url and api-key-hashes only).')
param apiIdentityId string
@description('Address range of the environment\'s ingress proxies: the only peers whose X-Forwarded-* the API trusts.')
param forwardedAllowIps string
param registryServer string
param imageTag string
@description('Vault URI, ending in a slash.')
param keyVaultUri string
param redisHost string
param redisPort int
@description('The Front Door profile\'s id; the API refuses requests without it in X-Azure-FDID.')
param frontDoorId string
param captionWorkerMaxReplicas int
param captionJobsPerReplica int
param apiMinReplicas int
param apiMaxReplicas int
param tags object

// Images pushed by deploy.sh: the API, the CUDA worker with the model baked in, and a small
// CPU worker image without a downloaded model for the webhook worker.
var apiImage = '${registryServer}/captionizer-api:${imageTag}'
var captionWorkerImage = '${registryServer}/captionizer-worker:${imageTag}'
var webhookWorkerImage = '${registryServer}/captionizer-worker-cpu:${imageTag}'

// The whole serverless GPU replica: one T4 with 8 vCPU and 56 GiB, or one A100 with 24 vCPU
// and 220 GiB. Ref: https://learn.microsoft.com/azure/container-apps/gpu-serverless-overview
var gpuContainerSizes = {
  'Consumption-GPU-NC8as-T4': {
    cpu: 8
    memory: '56Gi'
  }
  'Consumption-GPU-NC24-A100': {
    cpu: 24
    memory: '220Gi'
  }
}

var appIdentity = {
  type: 'UserAssigned'
  userAssignedIdentities: {
    '${identityId}': {}
  }
}

var registries = [
  {
    server: registryServer
    identity: identityId
  }
]
var apiIdentity = {
  type: 'UserAssigned'
  userAssignedIdentities: {
    '${apiIdentityId}': {}
  }
}

// Container Apps secrets that reference Key Vault; each app lists only the ones it uses.
// Ref: https://learn.microsoft.com/azure/container-apps/manage-secrets#reference-secret-from-key-vault
var redisUrlSecret = {
  name: 'redis-url'
  keyVaultUrl: '${keyVaultUri}secrets/redis-url'
  identity: identityId
}
var redisKeySecret = {
  name: 'redis-key'
  keyVaultUrl: '${keyVaultUri}secrets/redis-key'
  identity: identityId
}

var redisUrlEnv = {
  name: 'CAPTIONIZER_REDIS_URL'
  secretRef: 'redis-url'
}

resource api 'Microsoft.App/containerApps@2025-01-01' = {
  name: '${prefix}-api'
  location: location
  tags: tags
  identity: apiIdentity
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      registries: [
        {
          server: registryServer
          identity: apiIdentityId
        }
      ]
      // The API's identity can read these two secrets and no other (never webhook-secrets).
      secrets: [
        {
          name: 'redis-url'
          keyVaultUrl: '${keyVaultUri}secrets/redis-url'
          identity: apiIdentityId
        }
        {
          name: 'api-key-hashes'
          keyVaultUrl: '${keyVaultUri}secrets/api-key-hashes'
          identity: apiIdentityId
        }
      ]
      ingress: {
        // Public, but the API answers 403 to requests that lack our X-Azure-FDID (only
        // /healthz and /readyz are exempt, for the platform's probes).
        external: true
        targetPort: 8000
        transport: 'http'
        allowInsecure: false
      }
    }
    template: {
      containers: [
        {
          name: 'api'
          image: apiImage
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          env: [
            redisUrlEnv
            {
              name: 'CAPTIONIZER_API_KEY_HASHES'
              secretRef: 'api-key-hashes'
            }
            {
              name: 'CAPTIONIZER_FRONT_DOOR_ID'
              value: frontDoorId
            }
            {
              // uvicorn trusts X-Forwarded-For/-Proto only from these peers (the image's default is *).
              name: 'FORWARDED_ALLOW_IPS'
              value: forwardedAllowIps
            }
            {
              // Caption workers scale to zero on queue length: readiness must not wait for one,
              // or no replica would take the job that wakes them (docs/reliability.md).
              name: 'CAPTIONIZER_READY_REQUIRES_WORKER'
              value: 'false'
            }
          ]
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: 8000
              }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: 8000
              }
              periodSeconds: 10
              failureThreshold: 3
            }
            {
              // 503 until Redis answers: the replica gets no traffic, but is not restarted.
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: 8000
              }
              periodSeconds: 5
              failureThreshold: 2
            }
          ]
        }
      ]
      scale: {
        minReplicas: apiMinReplicas
        maxReplicas: apiMaxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: '100'
              }
            }
          }
        ]
      }
    }
  }
}

resource captionWorker 'Microsoft.App/containerApps@2025-01-01' = {
  name: '${prefix}-captioner'
  location: location
  tags: tags
  identity: appIdentity
  properties: {
    environmentId: environmentId
    // A container app, not a job: a replica keeps the model loaded between batches.
    workloadProfileName: gpuWorkloadProfileName
    configuration: {
      activeRevisionsMode: 'Single'
      registries: registries
      secrets: [
        redisUrlSecret
        redisKeySecret
      ]
    }
    template: {
      containers: [
        {
          // First container: serverless GPU apps give the GPU to the first container.
          name: 'caption-worker'
          image: captionWorkerImage
          command: [
            'celery'
            '-A'
            'worker'
            'worker'
            // Interactive jobs first, then batch chunks (worker/tasks.py): the order of -Q is the order consumed.
            '-Q'
            'captions,captions-bulk'
            '--loglevel'
            'INFO'
          ]
          resources: {
            cpu: gpuContainerSizes[gpuProfileType].cpu
            memory: gpuContainerSizes[gpuProfileType].memory
          }
          env: [
            redisUrlEnv
            {
              // Fail at start-up rather than caption on the CPU of a GPU replica.
              name: 'CAPTIONIZER_DEVICE'
              value: 'cuda'
            }
          ]
        }
      ]
      // Celery's warm shutdown finishes the running batch (job_time_limit_s, 120 s) on SIGTERM.
      terminationGracePeriodSeconds: 300
      scale: {
        minReplicas: 0
        maxReplicas: captionWorkerMaxReplicas
        pollingInterval: 15
        // Long enough to outlast a cold start, so bursts don't pay it twice. Work in hand is not idle
        // time: the metrics-api rule below counts it, so a busy replica is never scaled in.
        cooldownPeriod: 600
        // One rule per list the workers consume (so a bulk-only load wakes a worker from zero even with
        // the API away), and one on GET /scaler, which adds the jobs the workers hold (docs/deploy.md).
        rules: [
          {
            // Ref: https://keda.sh/docs/latest/scalers/redis-lists/ -- a Celery queue on Redis is a list
            // named after the queue (shared/keys.py CAPTION_QUEUE, BULK_QUEUE).
            name: 'caption-queue'
            custom: {
              type: 'redis'
              metadata: {
                address: '${redisHost}:${redisPort}'
                listName: 'captions'
                listLength: string(captionJobsPerReplica)
                activationListLength: '0'
                databaseIndex: '0'
                enableTLS: 'true'
              }
              // KEDA's redis scaler takes a password, not an Entra ID token.
              auth: [
                {
                  secretRef: 'redis-key'
                  triggerParameter: 'password'
                }
              ]
            }
          }
          {
            // Batch chunks: without this rule a bulk-only load never woke a worker from zero.
            name: 'bulk-queue'
            custom: {
              type: 'redis'
              metadata: {
                address: '${redisHost}:${redisPort}'
                listName: 'captions-bulk'
                listLength: string(captionJobsPerReplica)
                activationListLength: '0'
                databaseIndex: '0'
                enableTLS: 'true'
              }
              // KEDA's redis scaler takes a password, not an Entra ID token.
              auth: [
                {
                  secretRef: 'redis-key'
                  triggerParameter: 'password'
                }
              ]
            }
          }
          {
            // Ref: https://keda.sh/docs/latest/scalers/metrics-api/ -- the API reads both queues and the
            // workers' running-jobs sets (api/metrics.py outstanding_work); /scaler skips the Front Door check.
            name: 'outstanding-work'
            custom: {
              type: 'metrics-api'
              metadata: {
                url: 'https://${api.properties.configuration.ingress.fqdn}/scaler'
                format: 'json'
                valueLocation: 'outstanding'
                targetValue: string(captionJobsPerReplica)
                activationTargetValue: '0'
              }
            }
          }
        ]
      }
    }
  }
}

resource webhookWorker 'Microsoft.App/containerApps@2025-01-01' = {
  name: '${prefix}-webhooks'
  location: location
  tags: tags
  identity: appIdentity
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: 'Single'
      registries: registries
      secrets: [
        redisUrlSecret
        redisKeySecret
        {
          name: 'webhook-secrets'
          keyVaultUrl: '${keyVaultUri}secrets/webhook-secrets'
          identity: identityId
        }
      ]
    }
    template: {
      containers: [
        {
          name: 'webhook-worker'
          image: webhookWorkerImage
          command: [
            'celery'
            '-A'
            'worker'
            'worker'
            '-Q'
            'webhooks'
            // Deliveries wait on the network, not the CPU: threads, as `make run` and the tests run it.
            '--pool'
            'threads'
            '--concurrency'
            '4'
            '--loglevel'
            'INFO'
          ]
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
          env: [
            redisUrlEnv
            {
              name: 'CAPTIONIZER_WEBHOOK_SECRETS'
              secretRef: 'webhook-secrets'
            }
          ]
        }
      ]
      terminationGracePeriodSeconds: 30
      scale: {
        // At least one: retries wait as countdown tasks held by a running worker, which
        // the list length does not show.
        minReplicas: 1
        maxReplicas: 3
        rules: [
          {
            name: 'webhook-queue'
            custom: {
              type: 'redis'
              metadata: {
                address: '${redisHost}:${redisPort}'
                listName: 'webhooks'
                listLength: '200'
                databaseIndex: '0'
                enableTLS: 'true'
              }
              auth: [
                {
                  secretRef: 'redis-key'
                  triggerParameter: 'password'
                }
              ]
            }
          }
        ]
      }
    }
  }
}

output apiFqdn string = api.properties.configuration.ingress.fqdn

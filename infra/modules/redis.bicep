// Azure Managed Redis: the Celery broker, job records and results. Celery needs
// NoCluster (its Lua scripts and MULTI touch several keys) and NoEviction (an evicted
// queue entry is a lost job). Access keys stay enabled because KEDA's redis scaler
// cannot authenticate with Entra ID; the key goes to Key Vault, never to an output.
// Ref: https://learn.microsoft.com/azure/redis/overview
// Ref: https://keda.sh/docs/latest/scalers/redis-lists/
param name string
param location string
@description('Azure Managed Redis SKU, e.g. Balanced_B0, Balanced_B1, MemoryOptimized_M10.')
param sku string
param highAvailability bool
@description('Vault that receives the redis-key and redis-url secrets.')
param keyVaultName string
param tags object

// Azure Managed Redis listens for TLS on this port only.
var port = 10000

resource cluster 'Microsoft.Cache/redisEnterprise@2025-07-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    minimumTlsVersion: '1.2'
    highAvailability: highAvailability ? 'Enabled' : 'Disabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-07-01' = {
  parent: cluster
  // Azure Managed Redis has exactly one database, named default.
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: port
    clusteringPolicy: 'NoCluster'
    evictionPolicy: 'NoEviction'
    accessKeysAuthentication: 'Enabled'
    // Append-only file synced every second, as docker-compose.yml does locally.
    persistence: {
      aofEnabled: true
      aofFrequency: '1s'
    }
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// For KEDA's redis scaler (its `password` trigger parameter).
resource redisKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: an expired secret stops every app that reads it; rotation is a redeploy (infra/README.md)
  parent: vault
  name: 'redis-key'
  properties: {
    value: database.listKeys().primaryKey
    contentType: 'text/plain; Azure Managed Redis access key'
  }
}

// CAPTIONIZER_REDIS_URL for the API and the workers. The key is URL-escaped (it is base64
// and may hold / or +); ssl_cert_reqs=required makes redis-py and kombu verify the certificate.
resource redisUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: an expired secret stops every app that reads it; rotation is a redeploy (infra/README.md)
  parent: vault
  name: 'redis-url'
  properties: {
    value: 'rediss://:${uriComponent(database.listKeys().primaryKey)}@${cluster.properties.hostName}:${port}/0?ssl_cert_reqs=required'
    contentType: 'text/plain; rediss:// URL with the access key'
  }
}

output hostName string = cluster.properties.hostName
output port int = port

// Azure Managed Redis: the Celery broker, job records, results and each key's webhook secret.
// Celery needs NoCluster (its Lua scripts and MULTI touch several keys) and NoEviction (an
// evicted queue entry is a lost job). No public network access: the apps reach it through a
// private endpoint in the environment's VNet, so a leaked key is useless from outside. Access
// keys stay enabled because KEDA's redis scaler cannot authenticate with Entra ID; the key goes
// to Key Vault, never to an output.
// Ref: https://learn.microsoft.com/azure/redis/overview
// Ref: https://keda.sh/docs/latest/scalers/redis-lists/
param name string
param location string
@description('Azure Managed Redis SKU, e.g. Balanced_B0, Balanced_B1, MemoryOptimized_M10.')
param sku string
param highAvailability bool
@description('Vault that receives the redis-key and redis-url secrets.')
param keyVaultName string
@description('Subnet of the private endpoint (network.bicep).')
param endpointsSubnetId string
@description('VNet the private DNS zone is linked to, so the apps resolve the private address.')
param vnetId string
@description('The API\'s identity: Secrets User on redis-url only (not on the vault).')
param apiPrincipalId string
param tags object

// Built-in role: Key Vault Secrets User (read secret values).
var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

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
    publicNetworkAccess: 'Disabled'
  }
}

// Ref: https://learn.microsoft.com/azure/private-link/private-endpoint-dns#databases -- Azure Managed Redis.
resource privateDns 'Microsoft.Network/privateDnsZones@2024-06-01' = {
  name: 'privatelink.redis.azure.net'
  location: 'global'
  tags: tags
}

resource privateDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = {
  parent: privateDns
  name: 'environment-vnet'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}

resource privateEndpoint 'Microsoft.Network/privateEndpoints@2024-05-01' = {
  name: 'pe-${name}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: endpointsSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'redis'
        properties: {
          privateLinkServiceId: cluster.id
          groupIds: [
            'redisEnterprise'
          ]
        }
      }
    ]
  }
}

resource privateDnsGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = {
  parent: privateEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'redis'
        properties: {
          privateDnsZoneId: privateDns.id
        }
      }
    ]
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

// Secret-level RBAC: the API reads redis-url, and nothing else of what this module writes.
// Ref: https://learn.microsoft.com/azure/key-vault/general/rbac-guide#secret-scope-role-assignment
resource apiReadsRedisUrl 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(redisUrlSecret.id, apiPrincipalId, secretsUserRoleId)
  scope: redisUrlSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: apiPrincipalId
    principalType: 'ServicePrincipal'
  }
}

output hostName string = cluster.properties.hostName
output port int = port

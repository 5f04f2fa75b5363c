// Key Vault for the API-key hashes, the deployment-wide webhook secrets and the Redis key
// (redis.bicep writes those). The apps read them as Container Apps secrets that reference the vault.
// Ref: https://learn.microsoft.com/azure/container-apps/manage-secrets#reference-secret-from-key-vault
@description('Vault name: 3-24 characters, globally unique.')
param name string
param location string
@description('The workers\' identity: Key Vault Secrets User on the whole vault.')
param readerPrincipalId string
@description('The API\'s identity: Secrets User on api-key-hashes only, so it never reads webhook-secrets.')
param apiPrincipalId string
@secure()
param apiKeyHashes string
@secure()
param webhookSecrets string
param logAnalyticsId string
param tags object

// Built-in role: Key Vault Secrets User (read secret values).
// Ref: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security#key-vault-secrets-user
var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the vault keeps its public endpoint, where Entra ID RBAC is the gate; Redis, which holds a shared key, is the one behind a private endpoint (infra/README.md)
  // checkov:skip=CKV_AZURE_189: same reason (infra/README.md, "Network")
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Azure RBAC instead of access policies: one model for every resource here.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // Deleted secrets stay recoverable for 90 days; names are unique per resource group, so a
    // redeploy into a new group never waits for a purge.
    enablePurgeProtection: true
    // Container Apps on the consumption plan reach the vault over its public endpoint;
    // only Entra ID principals with a role get through.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, readerPrincipalId, secretsUserRoleId)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource apiKeyHashesSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: an expired secret stops every app that reads it; rotation is a redeploy (infra/README.md)
  parent: vault
  name: 'api-key-hashes'
  properties: {
    value: apiKeyHashes
    contentType: 'text/plain; comma-separated SHA-256 hex digests'
  }
}

// Secret-level RBAC: the API's role covers this one secret (redis.bicep adds redis-url).
// Ref: https://learn.microsoft.com/azure/key-vault/general/rbac-guide#secret-scope-role-assignment
resource apiReadsKeyHashes 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(apiKeyHashesSecret.id, apiPrincipalId, secretsUserRoleId)
  scope: apiKeyHashesSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: apiPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource webhookSecretsSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: an expired secret stops every app that reads it; rotation is a redeploy (infra/README.md)
  parent: vault
  name: 'webhook-secrets'
  properties: {
    value: webhookSecrets
    contentType: 'text/plain; comma-separated whsec_ values'
  }
}

// preview: diagnosticSettings has no GA version newer than 2016-09-01, which lacks categoryGroup.
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri

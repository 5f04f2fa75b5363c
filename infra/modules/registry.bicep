// The registry and the identities that pull from it: one for the workers, one for the API, so
// each can be given only the Key Vault secrets it needs (keyvault.bicep, redis.bicep). The apps use
// user-assigned identities (not system-assigned ones), so AcrPull exists before the first app is created.
// Ref: https://learn.microsoft.com/azure/container-apps/managed-identity-image-pull
param prefix string
param location string
param sku string
param tags object

// Built-in role: AcrPull.
// Ref: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/containers#acrpull
var acrPullRoleId = '7f951dda-4ed3-4680-a7ca-43fe172d538d'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}'
  location: location
  tags: tags
}

resource apiIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${prefix}-api'
  location: location
  tags: tags
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139: private networking needs Premium and a VNet-integrated environment (infra/README.md)
  // checkov:skip=CKV_AZURE_163: image scanning is Defender for Containers, a subscription plan, not a registry property
  // checkov:skip=CKV_AZURE_166: quarantine is a preview Premium feature; images are pushed only by deploy.sh
  // Registry names are 5-50 letters and digits, globally unique.
  name: take('cr${replace(prefix, '-', '')}${uniqueString(resourceGroup().id)}', 50)
  location: location
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    // Only Entra ID identities pull and push; no shared admin password exists.
    adminUserEnabled: false
    anonymousPullEnabled: false
  }
}

resource acrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, identity.id, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: identity.properties.principalId
    // A new identity may not have replicated yet; naming its type skips the directory lookup.
    principalType: 'ServicePrincipal'
  }
}

resource apiAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, apiIdentity.id, acrPullRoleId)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', acrPullRoleId)
    principalId: apiIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

output identityId string = identity.id
output identityPrincipalId string = identity.properties.principalId
output apiIdentityId string = apiIdentity.id
output apiIdentityPrincipalId string = apiIdentity.properties.principalId
output loginServer string = registry.properties.loginServer
output name string = registry.name

// The Container Apps environment: the default Consumption profile (API, webhook worker) and
// one serverless GPU profile (caption worker). A GPU profile can be added only when the
// environment is created, so changing gpuProfileType means a new environment.
// Ref: https://learn.microsoft.com/azure/container-apps/gpu-serverless-overview
param name string
param location string
@description('Consumption-GPU-NC8as-T4 or Consumption-GPU-NC24-A100.')
param gpuProfileType string
param logAnalyticsName string
@description('Subnet the environment runs in (network.bicep), so Redis is reached by its private endpoint.')
param infrastructureSubnetId string
param tags object

// The name apps use in workloadProfileName to land on the GPU.
var gpuWorkloadProfileName = 'gpu'

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: logAnalyticsName
}

resource environment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    vnetConfiguration: {
      infrastructureSubnetId: infrastructureSubnetId
      // External: Front Door reaches the API's ingress; Redis stays private.
      internal: false
    }
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
      {
        // Serverless GPU: billed per second while a replica runs, nothing at zero replicas.
        name: gpuWorkloadProfileName
        workloadProfileType: gpuProfileType
      }
    ]
  }
}

output id string = environment.id
output gpuWorkloadProfileName string = gpuWorkloadProfileName

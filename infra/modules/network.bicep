// The environment's network: one VNet with a subnet for the Container Apps environment
// (its ingress and replicas) and one for private endpoints. Redis is reachable only through
// its private endpoint here, by the name the private DNS zone maps to the endpoint's address.
// Ref: https://learn.microsoft.com/azure/container-apps/custom-virtual-networks
// Ref: https://learn.microsoft.com/azure/redis/private-link
param prefix string
param location string
param tags object

@description('Address space of the VNet.')
param addressPrefix string = '10.40.0.0/16'
// Workload-profile environments need at least a /27, delegated to Microsoft.App/environments.
var appsSubnetPrefix = '10.40.0.0/23'
var endpointsSubnetPrefix = '10.40.2.0/27'

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: 'vnet-${prefix}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          delegations: [
            {
              name: 'container-apps'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: endpointsSubnetPrefix
        }
      }
    ]
  }
}

output vnetId string = vnet.id
output appsSubnetId string = vnet.properties.subnets[0].id
@description('Where the environment\'s ingress proxies run: the only peers whose X-Forwarded-* the API trusts.')
output appsSubnetPrefix string = appsSubnetPrefix
output endpointsSubnetId string = vnet.properties.subnets[1].id

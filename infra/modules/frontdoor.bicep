// Front Door with a WAF policy in front of the API. The profile's frontDoorId goes to the
// API as CAPTIONIZER_FRONT_DOOR_ID, and Front Door sends it in X-Azure-FDID, so requests
// that bypass Front Door to the app's own address are refused.
// The origin and the route (they need the API's address) are in frontdoor-origin.bicep.
// Ref: https://learn.microsoft.com/azure/frontdoor/origin-security#http-headers
param prefix string
@description('Standard_AzureFrontDoor or Premium_AzureFrontDoor.')
param sku string
@description('Detection or Prevention.')
param wafMode string
param logAnalyticsId string
param tags object

var isPremium = sku == 'Premium_AzureFrontDoor'

resource profile 'Microsoft.Cdn/profiles@2024-02-01' = {
  name: 'afd-${prefix}'
  location: 'global'
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    // Long-polls (?wait=, up to 60 s) and GET /caption (30 s) outlive the default 60 s
    // only with headroom; Front Door allows 16-240 s.
    originResponseTimeoutSeconds: 120
  }
}

resource endpoint 'Microsoft.Cdn/profiles/afdEndpoints@2024-02-01' = {
  parent: profile
  name: 'api-${uniqueString(resourceGroup().id, prefix)}'
  location: 'global'
  tags: tags
  properties: {
    enabledState: 'Enabled'
  }
}

// WAF policy names are letters and digits only. Managed rule sets need the Premium tier;
// the rate limit works on both.
// Ref: https://learn.microsoft.com/azure/web-application-firewall/afds/waf-front-door-drs
resource wafPolicy 'Microsoft.Network/FrontDoorWebApplicationFirewallPolicies@2024-02-01' = {
  name: 'waf${replace(prefix, '-', '')}'
  location: 'global'
  tags: tags
  sku: {
    name: sku
  }
  properties: {
    policySettings: {
      enabledState: 'Enabled'
      mode: wafMode
      requestBodyCheck: 'Enabled'
    }
    managedRules: {
      managedRuleSets: isPremium ? [
        {
          ruleSetType: 'Microsoft_DefaultRuleSet'
          ruleSetVersion: '2.1'
          ruleSetAction: 'Block'
        }
        {
          ruleSetType: 'Microsoft_BotManagerRuleSet'
          ruleSetVersion: '1.1'
        }
      ] : []
    }
    customRules: {
      rules: [
        {
          // A coarse per-address limit in front of the API's per-key limit.
          name: 'RateLimitPerClientIp'
          priority: 100
          enabledState: 'Enabled'
          ruleType: 'RateLimitRule'
          rateLimitDurationInMinutes: 1
          rateLimitThreshold: 1000
          matchConditions: [
            {
              matchVariable: 'RemoteAddr'
              operator: 'IPMatch'
              matchValue: [
                '0.0.0.0/0'
                '::/0'
              ]
            }
          ]
          action: 'Block'
        }
      ]
    }
  }
}

resource securityPolicy 'Microsoft.Cdn/profiles/securityPolicies@2024-02-01' = {
  parent: profile
  name: 'waf'
  properties: {
    parameters: {
      type: 'WebApplicationFirewall'
      wafPolicy: {
        id: wafPolicy.id
      }
      associations: [
        {
          domains: [
            {
              id: endpoint.id
            }
          ]
          patternsToMatch: [
            '/*'
          ]
        }
      ]
    }
  }
}

// preview: diagnosticSettings has no GA version newer than 2016-09-01, which lacks categoryGroup.
resource diagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: profile
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

output frontDoorId string = profile.properties.frontDoorId
output profileName string = profile.name
output endpointName string = endpoint.name
output endpointHostName string = endpoint.properties.hostName

// The Key Vault holding the few values that must not sit in app settings: the webhook's shared
// secret, the API's static token (when Entra ID is not configured), the API's Entra tenant and
// audience, and the Application Insights connection string. RBAC only; each identity may read
// only the secrets its app references.

param location string
param resourceToken string
param tags object

@secure()
param webhookSecret string

@secure()
@description('Static bearer token for the API, used when apiAudience is empty.')
param apiToken string

@description('Entra tenant and audience (the API app registration) of the tokens the API accepts; empty: the static token instead.')
param apiTenantId string
param apiAudience string

@secure()
param appInsightsConnectionString string

@description('Principal id of each identity, by name.')
param principalIds object

@description('Object id of the deploying user (reads secrets to keep them across deployments); empty for none.')
param deployerPrincipalId string
param deployerPrincipalType string

var roles = loadJsonContent('../roles.json')
var workers = [
  'aggregation'
  'split'
  'train'
  'register'
  'tag'
]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-${resourceToken}'
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource webhookSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'webhook-secret'
  properties: {
    value: webhookSecret
    contentType: 'text/plain'
  }
}

// The API takes Entra ID tokens when an audience is given, else the static token.
var entra = !empty(apiAudience)

resource apiTokenValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!entra) {
  parent: vault
  name: 'api-token'
  properties: {
    value: apiToken
    contentType: 'text/plain'
  }
}

resource apiTenantValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (entra) {
  parent: vault
  name: 'api-tenant-id'
  properties: {
    value: apiTenantId
    contentType: 'text/plain'
  }
}

resource apiAudienceValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (entra) {
  parent: vault
  name: 'api-audience'
  properties: {
    value: apiAudience
    contentType: 'text/plain'
  }
}

resource appInsightsValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'appinsights-connection-string'
  properties: {
    value: appInsightsConnectionString
    contentType: 'text/plain'
  }
}

resource coordinatorWebhookRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(webhookSecretValue.id, 'coordinator', roles.keyVaultSecretsUser)
  scope: webhookSecretValue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalIds.coordinator
    principalType: 'ServicePrincipal'
  }
}

resource coordinatorTokenRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!entra) {
  name: guid(apiTokenValue.id, 'coordinator', roles.keyVaultSecretsUser)
  scope: apiTokenValue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalIds.coordinator
    principalType: 'ServicePrincipal'
  }
}

resource coordinatorTenantRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (entra) {
  name: guid(apiTenantValue.id, 'coordinator', roles.keyVaultSecretsUser)
  scope: apiTenantValue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalIds.coordinator
    principalType: 'ServicePrincipal'
  }
}

resource coordinatorAudienceRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (entra) {
  name: guid(apiAudienceValue.id, 'coordinator', roles.keyVaultSecretsUser)
  scope: apiAudienceValue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalIds.coordinator
    principalType: 'ServicePrincipal'
  }
}

resource appInsightsRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for reader in union(workers, ['coordinator']): {
  name: guid(appInsightsValue.id, reader, roles.keyVaultSecretsUser)
  scope: appInsightsValue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: principalIds[reader]
    principalType: 'ServicePrincipal'
  }
}]

// azd keeps generated secrets stable across deployments by reading them back from the vault.
resource deployerRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
output entraAuth bool = entra

// The container registry the images are pushed to (azd deploy) and pulled from by the apps
// (each with its own identity, AcrPull only) and by Azure ML (its training environment).

param location string
param resourceToken string
param tags object

@description('Principal id of each service identity, by service name.')
param principalIds object

var roles = loadJsonContent('../roles.json')
var apps = [
  'coordinator'
  'aggregation'
  'split'
  'train'
  'register'
  'tag'
]

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: 'cr${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    adminUserEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource pullRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for app in apps: {
  name: guid(registry.id, app, roles.acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: principalIds[app]
    principalType: 'ServicePrincipal'
    description: '${app} pulls its image'
  }
}]

output id string = registry.id
output name string = registry.name
output loginServer string = registry.properties.loginServer

// The whole retrainer system in one resource group: Service Bus (topology generated from
// shared/topology.py), data storage with Event Grid, Container Apps (coordinator + five workers
// scaled by KEDA), one managed identity per service with least-privilege roles, Key Vault,
// PostgreSQL (Entra auth), Azure ML (GPU and CPU clusters, environment, code, datastore),
// Log Analytics + Application Insights + workbook + alerts.
//
//   azd up                                   # azure.yaml at the repository root; see deploy/README.md
//   az deployment group create -g <rg> -f deploy/azure/main.bicep -p environmentName=<name> ...

targetScope = 'resourceGroup'

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd); tags the resources and seeds their names.')
param environmentName string

@description('Region of every resource.')
param location string = resourceGroup().location

@description('Object id of the deploying user or service principal; empty for none.')
param principalId string = ''

@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

@secure()
@description('Shared secret of POST /events/blob (?code= or aeg-sas-key); azd generates one and keeps it in Key Vault.')
param webhookSecret string

@secure()
@description('Static bearer token of the API, used only when apiAudience is empty; azd generates one.')
param apiToken string = ''

@description('Entra ID: the API app registration\'s application id URI or client id (the token audience); empty: the static token.')
param apiAudience string = ''

@description('Entra ID tenant of the API\'s callers; defaults to this deployment\'s tenant.')
param apiTenantId string = tenant().tenantId

@description('Which uploads start which runs: RETRAINER_TRIGGER_RULES (see docs/architecture.md, "Triggers"); their containers are created and watched by Event Grid.')
param triggerRules array = [
  {
    container: 'datasets'
    prefix: 'state-identifier/'
    recipe: 'state_identifier'
  }
]

@description('Recorded on every model version as lineage; the code asset version registered by the postprovision hook.')
param codeVersion string = 'dev'

@description('Container image per service; azd sets them after it has built and pushed them.')
param coordinatorImage string = ''
param aggregationImage string = ''
param splitImage string = ''
param trainImage string = ''
param registerImage string = ''
param tagImage string = ''

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
])
param storageSku string = 'Standard_ZRS'

param postgresSkuName string = 'Standard_B1ms'
@allowed([
  'Burstable'
  'GeneralPurpose'
  'MemoryOptimized'
])
param postgresSkuTier string = 'Burstable'

param gpuVmSize string = 'Standard_NC4as_T4_v3'
@minValue(1)
param gpuMaxNodes int = 2
param cpuVmSize string = 'Standard_DS3_v2'
@minValue(1)
param cpuMaxNodes int = 4
@description('Base image of the Azure ML training environment (its conda file is deploy/azureml/environment.yml).')
param amlBaseImage string = 'mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest'

@minValue(1)
param workerMaxReplicas int = 4

@description('E-mail address the alerts notify; empty: alerts show in the portal only.')
param alertEmail string = ''

@minValue(1)
@description('Alert when no run of a recipe has succeeded for this many days.')
param staleAfterDays int = 7

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
  application: 'retrainer'
}
// Until azd deploys the real images, a placeholder keeps the apps provisionable.
var placeholderImage = 'mcr.microsoft.com/k8se/quickstart:latest'
var subjectPrefixes = [for rule in triggerRules: '/blobServices/default/containers/${rule.container}/blobs/${contains(rule, 'prefix') ? rule.prefix : ''}']
var ruleContainers = [for rule in triggerRules: rule.container]

module identities 'modules/identities.bicep' = {
  name: 'identities'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    principalIds: identities.outputs.principalIds
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    skuName: storageSku
    dataContainers: union(ruleContainers, [])
    subjectPrefixes: subjectPrefixes
    principalIds: identities.outputs.principalIds
    eventGridIdentityId: identities.outputs.resourceIds.eventgrid
    blobEventsTopicId: serviceBus.outputs.blobEventsTopicId
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    principalIds: identities.outputs.principalIds
    serviceBusNamespaceId: serviceBus.outputs.id
    alertEmail: alertEmail
    staleAfterDays: staleAfterDays
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    webhookSecret: webhookSecret
    apiToken: apiToken
    apiTenantId: apiTenantId
    apiAudience: apiAudience
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    principalIds: identities.outputs.principalIds
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
  }
}

module postgres 'modules/postgres.bicep' = {
  name: 'postgres'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    skuName: postgresSkuName
    skuTier: postgresSkuTier
    coordinatorPrincipalId: identities.outputs.principalIds.coordinator
    coordinatorIdentityName: identities.outputs.names.coordinator
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    principalIds: identities.outputs.principalIds
  }
}

module azureMl 'modules/azureml.bicep' = {
  name: 'azureml'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    applicationInsightsId: monitoring.outputs.appInsightsId
    containerRegistryId: registry.outputs.id
    dataAccountName: storage.outputs.name
    artifactsContainer: storage.outputs.artifactsContainer
    principalIds: identities.outputs.principalIds
    computeIdentityId: identities.outputs.resourceIds.amlcompute
    eventGridIdentityId: identities.outputs.resourceIds.eventgrid
    computeEventsTopicId: serviceBus.outputs.computeEventsTopicId
    gpuVmSize: gpuVmSize
    gpuMaxNodes: gpuMaxNodes
    cpuVmSize: cpuVmSize
    cpuMaxNodes: cpuMaxNodes
    trainImage: amlBaseImage
  }
}

module containerApps 'modules/containerapps.bicep' = {
  name: 'containerapps'
  params: {
    location: location
    resourceToken: resourceToken
    tags: tags
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    registryServer: registry.outputs.loginServer
    principalIds: identities.outputs.principalIds
    clientIds: identities.outputs.clientIds
    identityIds: identities.outputs.resourceIds
    coordinatorIdentityName: identities.outputs.names.coordinator
    images: {
      coordinator: empty(coordinatorImage) ? placeholderImage : coordinatorImage
      aggregation: empty(aggregationImage) ? placeholderImage : aggregationImage
      split: empty(splitImage) ? placeholderImage : splitImage
      train: empty(trainImage) ? placeholderImage : trainImage
      register: empty(registerImage) ? placeholderImage : registerImage
      tag: empty(tagImage) ? placeholderImage : tagImage
    }
    serviceBusNamespace: serviceBus.outputs.name
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    lockDurationSeconds: serviceBus.outputs.lockDurationSeconds
    blobEndpoint: storage.outputs.blobEndpoint
    mlflowTrackingUri: azureMl.outputs.mlflowTrackingUri
    keyVaultUri: keyVault.outputs.uri
    entraAuth: keyVault.outputs.entraAuth
    postgresHost: postgres.outputs.host
    postgresDatabase: postgres.outputs.databaseName
    triggerRules: triggerRules
    codeVersion: codeVersion
    azureMlWorkspace: azureMl.outputs.name
    azureMlEnvironment: azureMl.outputs.environmentReference
    azureMlCodeAsset: azureMl.outputs.codeAsset
    azureMlDatastore: azureMl.outputs.datastore
    azureMlGpuCluster: azureMl.outputs.gpuCluster
    workerMaxReplicas: workerMaxReplicas
  }
  dependsOn: [
    registry
    keyVault
    storage
    serviceBus
  ]
}

// azd reads these into its environment (azd env get-values); the hooks and the CLI use them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_CONTAINER_REGISTRY_ENDPOINT string = registry.outputs.loginServer
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_ML_WORKSPACE string = azureMl.outputs.name
output AZURE_STORAGE_ACCOUNT string = storage.outputs.name
output RETRAINER_API_URL string = containerApps.outputs.coordinatorUrl
output RETRAINER_CODE_VERSION string = codeVersion

// The Container Apps environment and the six apps: the coordinator
// (external HTTPS ingress, always one replica up) and the five stage workers, each scaled from
// zero by KEDA's azure-servicebus rule on the subscriptions it consumes
// (generated/servicebus.json), authenticated as the scaler identity.

param location string
param resourceToken string
param tags object

param logAnalyticsId string
param registryServer string

@description('Outputs of identities.bicep.')
param principalIds object
param clientIds object
param identityIds object
param coordinatorIdentityName string

@description('Container image per service (azd fills these in after `azd deploy`).')
param images object

param serviceBusNamespace string
param serviceBusFullyQualifiedNamespace string
param lockDurationSeconds int
param blobEndpoint string
param mlflowTrackingUri string
param keyVaultUri string
param entraAuth bool
param postgresHost string
param postgresDatabase string

@description('RETRAINER_TRIGGER_RULES: which uploads start which runs.')
param triggerRules array
param codeVersion string

param azureMlWorkspace string
param azureMlEnvironment string
param azureMlCodeAsset string
param azureMlDatastore string
param azureMlGpuCluster string

param workerMaxReplicas int

var topology = loadJsonContent('../generated/servicebus.json')
var workers = [
  'aggregation'
  'split'
  'train'
  'register'
  'tag'
]
var workerHealthPort = 8081
// The training libraries (TensorFlow, LightGBM, ...) need more memory than the other stages.
var workerSizes = {
  aggregation: {
    cpu: '1.0'
    memory: '2Gi'
  }
  split: {
    cpu: '1.0'
    memory: '2Gi'
  }
  train: {
    cpu: '2.0'
    memory: '4Gi'
  }
  register: {
    cpu: '0.5'
    memory: '1Gi'
  }
  tag: {
    cpu: '0.5'
    memory: '1Gi'
  }
}

var commonEnv = [
  {
    name: 'RETRAINER_BUS'
    value: 'servicebus'
  }
  {
    name: 'RETRAINER_SERVICEBUS_NAMESPACE'
    value: serviceBusFullyQualifiedNamespace
  }
  {
    name: 'RETRAINER_BUS_LOCK_DURATION_S'
    value: string(lockDurationSeconds)
  }
  {
    name: 'RETRAINER_BLOB'
    value: 'azure'
  }
  {
    name: 'RETRAINER_BLOB_ACCOUNT_URL'
    value: blobEndpoint
  }
  {
    name: 'RETRAINER_MLFLOW_TRACKING_URI'
    value: mlflowTrackingUri
  }
  {
    name: 'RETRAINER_CODE_VERSION'
    value: codeVersion
  }
  {
    name: 'RETRAINER_TELEMETRY_EXPORTER'
    value: 'azure'
  }
  {
    name: 'RETRAINER_TELEMETRY_ENTRA_AUTH'
    value: 'true'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    secretRef: 'appinsights-connection-string'
  }
]
var commonSecrets = [
  {
    name: 'appinsights-connection-string'
    secret: 'appinsights-connection-string'
  }
]

var workerEnv = concat(commonEnv, [
  {
    name: 'RETRAINER_HEALTH_PORT'
    value: string(workerHealthPort)
  }
])
// The Azure ML workspace: train submits jobs there; split registers each split as a data-asset
// version there and the coordinator resolves 'asset:<name>@<version>' runs against it.
var azureMlEnv = [
  {
    name: 'RETRAINER_AZUREML_SUBSCRIPTION_ID'
    value: subscription().subscriptionId
  }
  {
    name: 'RETRAINER_AZUREML_RESOURCE_GROUP'
    value: resourceGroup().name
  }
  {
    name: 'RETRAINER_AZUREML_WORKSPACE'
    value: azureMlWorkspace
  }
  {
    name: 'RETRAINER_AZUREML_DATASTORE'
    value: azureMlDatastore
  }
  {
    name: 'RETRAINER_DATA_ASSETS'
    value: 'azureml'
  }
]
var trainEnv = concat(azureMlEnv, [
  {
    name: 'RETRAINER_COMPUTE_GPU'
    value: 'azureml'
  }
  {
    name: 'RETRAINER_AZUREML_COMPUTE'
    value: azureMlGpuCluster
  }
  {
    name: 'RETRAINER_AZUREML_ENVIRONMENT'
    value: azureMlEnvironment
  }
  {
    name: 'RETRAINER_AZUREML_CODE_DIR'
    value: 'azureml:${azureMlCodeAsset}:${codeVersion}'
  }
])

// The database user is the identity's name; the password is an Entra token the coordinator
// fetches for each new connection (RETRAINER_DATABASE_ENTRA_AUTH).
var coordinatorEnv = concat(commonEnv, azureMlEnv, [
  {
    name: 'RETRAINER_DATABASE_URL'
    value: 'postgresql+psycopg://${coordinatorIdentityName}@${postgresHost}:5432/${postgresDatabase}?sslmode=require'
  }
  {
    name: 'RETRAINER_DATABASE_ENTRA_AUTH'
    value: 'true'
  }
  {
    name: 'RETRAINER_TRIGGER_RULES'
    value: string(triggerRules)
  }
  {
    name: 'RETRAINER_TRIGGER_WEBHOOK_SECRET'
    secretRef: 'webhook-secret'
  }
], entraAuth ? [
  {
    name: 'RETRAINER_AUTH_TENANT_ID'
    secretRef: 'api-tenant-id'
  }
  {
    name: 'RETRAINER_AUTH_AUDIENCE'
    secretRef: 'api-audience'
  }
] : [
  {
    name: 'RETRAINER_API_TOKEN'
    secretRef: 'api-token'
  }
])
var coordinatorSecrets = concat(commonSecrets, [
  {
    name: 'webhook-secret'
    secret: 'webhook-secret'
  }
], entraAuth ? [
  {
    name: 'api-tenant-id'
    secret: 'api-tenant-id'
  }
  {
    name: 'api-audience'
    secret: 'api-audience'
  }
] : [
  {
    name: 'api-token'
    secret: 'api-token'
  }
])

resource appsEnvironment 'Microsoft.App/managedEnvironments@2025-01-01' = {
  name: 'cae-${resourceToken}'
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'azure-monitor'
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
  }
}

resource environmentLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'to-log-analytics'
  scope: appsEnvironment
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

module coordinator 'app.bicep' = {
  name: 'app-coordinator'
  params: {
    name: 'coordinator'
    location: location
    tags: tags
    environmentId: appsEnvironment.id
    registryServer: registryServer
    image: images.coordinator
    identityId: identityIds.coordinator
    clientId: clientIds.coordinator
    scalerIdentityId: ''
    env: coordinatorEnv
    secrets: coordinatorSecrets
    keyVaultUri: keyVaultUri
    port: 8080
    externalIngress: true
    livenessPath: '/healthz'
    readinessPath: '/readyz'
    cpu: '1.0'
    memory: '2Gi'
    minReplicas: 1
    maxReplicas: 1
    scaleRules: []
  }
}

module workerApps 'app.bicep' = [for worker in workers: {
  name: 'app-${worker}'
  params: {
    name: worker
    location: location
    tags: tags
    environmentId: appsEnvironment.id
    registryServer: registryServer
    image: images[worker]
    identityId: identityIds[worker]
    clientId: clientIds[worker]
    scalerIdentityId: identityIds.scaler
    env: (worker == 'train') ? concat(workerEnv, trainEnv) : ((worker == 'split') ? concat(workerEnv, azureMlEnv) : workerEnv)
    secrets: commonSecrets
    keyVaultUri: keyVaultUri
    port: workerHealthPort
    externalIngress: false
    livenessPath: '/healthz'
    readinessPath: '/healthz'
    cpu: workerSizes[worker].cpu
    memory: workerSizes[worker].memory
    minReplicas: 0
    maxReplicas: workerMaxReplicas
    scaleRules: [for (sub, i) in topology.scaledSubscriptionsByService[worker]: {
      name: '${sub.topic}-${sub.name}'
      custom: {
        type: 'azure-servicebus'
        identity: identityIds.scaler
        metadata: {
          namespace: serviceBusNamespace
          topicName: sub.topic
          subscriptionName: sub.name
          messageCount: '1'
        }
      }
    }]
  }
}]

output environmentName string = appsEnvironment.name
output coordinatorUrl string = 'https://${coordinator.outputs.fqdn}'

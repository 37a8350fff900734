// The Azure ML workspace the train stage hands GPU recipes to: a GPU cluster and a CPU cluster
// (both scale to zero), the training environment (deploy/azureml/environment.yml, versioned by
// its content), the code asset's container (versions are registered from the repository by the
// postprovision hook), the datastore on the 'artifacts' container (identity-based: no keys),
// and an Event Grid subscription that sends RunStatusChanged for finished jobs to the Service
// Bus topic 'compute-events'. The workspace's MLflow is the model registry.

param location string
param resourceToken string
param tags object

param applicationInsightsId string
param containerRegistryId string

@description('Data storage account name and the container stage outputs live in.')
param dataAccountName string
param artifactsContainer string

@description('Principal id of each identity, by name.')
param principalIds object

@description('Resource ids of the identities the clusters and Event Grid use.')
param computeIdentityId string
param eventGridIdentityId string

@description('Resource id of the Service Bus topic compute-events.')
param computeEventsTopicId string

param gpuVmSize string
param gpuMaxNodes int
param cpuVmSize string
param cpuMaxNodes int

@description('Base image of the training environment.')
param trainImage string

var roles = loadJsonContent('../roles.json')
var condaFile = loadTextContent('../../azureml/environment.yml')
// A content hash: a changed environment.yml (or image) is a new version; the same one is kept.
var environmentVersion = uniqueString(condaFile, trainImage)
// Services that reach the workspace: train submits and follows jobs; all three use its MLflow;
// split registers data-asset versions (the coordinator reads them).
var workspaceUsers = [
  'train'
  'split'
  'register'
  'tag'
  // An operator's promote or rollback through the API writes the model registry.
  'coordinator'
]

// The workspace's own storage and key vault (Azure ML keeps job snapshots, logs and its
// connections there); the data lives in the data account.
resource workspaceStorage 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: 'stml${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource workspaceVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kvml${resourceToken}'
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

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' = {
  name: 'mlw-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    friendlyName: 'retrainer'
    storageAccount: workspaceStorage.id
    keyVault: workspaceVault.id
    applicationInsights: applicationInsightsId
    containerRegistry: containerRegistryId
    publicNetworkAccess: 'Enabled'
    v1LegacyMode: false
  }
}

resource gpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: 'gpu-cluster'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${computeIdentityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    disableLocalAuth: true
    description: 'GPU recipes; scales to zero when idle'
    properties: {
      vmSize: gpuVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: gpuMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT120S'
      }
    }
  }
}

resource cpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-10-01' = {
  parent: workspace
  name: 'cpu-cluster'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${computeIdentityId}': {}
    }
  }
  properties: {
    computeType: 'AmlCompute'
    disableLocalAuth: true
    description: 'CPU recipes too heavy for the train worker; scales to zero when idle'
    properties: {
      vmSize: cpuVmSize
      vmPriority: 'Dedicated'
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: cpuMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT120S'
      }
    }
  }
}

resource trainEnvironment 'Microsoft.MachineLearningServices/workspaces/environments@2024-10-01' = {
  parent: workspace
  name: 'retrainer-train'
  properties: {
    description: 'retrainer train stage: recipes and their libraries (deploy/azureml/environment.yml)'
  }
}

resource environmentVersionResource 'Microsoft.MachineLearningServices/workspaces/environments/versions@2024-10-01' = {
  parent: trainEnvironment
  name: environmentVersion
  properties: {
    image: trainImage
    condaFile: condaFile
    osType: 'Linux'
    autoRebuild: 'Disabled'
  }
}

resource code 'Microsoft.MachineLearningServices/workspaces/codes@2024-10-01' = {
  parent: workspace
  name: 'retrainer-src'
  properties: {
    description: 'The shared/, services/ and recipes/ packages (registered per release by the postprovision hook)'
  }
}

resource datastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: 'retrainer_artifacts'
  properties: {
    datastoreType: 'AzureBlob'
    accountName: dataAccountName
    containerName: artifactsContainer
    endpoint: environment().suffixes.storage
    protocol: 'https'
    credentials: {
      credentialsType: 'None'
    }
    serviceDataAccessAuthIdentity: 'None'
    description: 'Stage outputs: the jobs read the split and write the model here with their identity'
  }
}

resource dataScientistRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for user in workspaceUsers: {
  name: guid(workspace.id, user, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: principalIds[user]
    principalType: 'ServicePrincipal'
    description: '${user} uses the workspace (jobs, MLflow)'
  }
}]

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-${workspace.name}'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${eventGridIdentityId}': {}
    }
  }
  properties: {
    source: workspace.id
    topicType: 'Microsoft.MachineLearningServices.Workspaces'
  }
}

resource runStatusChanged 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'run-finished-to-servicebus'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    deliveryWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: eventGridIdentityId
      }
      destination: {
        endpointType: 'ServiceBusTopic'
        properties: {
          resourceId: computeEventsTopicId
        }
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.MachineLearningServices.RunStatusChanged'
      ]
      advancedFilters: [
        {
          operatorType: 'StringIn'
          key: 'data.runStatus'
          values: [
            'Completed'
            'Failed'
            'Canceled'
          ]
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

output name string = workspace.name
output mlflowTrackingUri string = workspace.properties.mlFlowTrackingUri
output environmentReference string = 'azureml:${trainEnvironment.name}:${environmentVersion}'
output gpuCluster string = gpuCluster.name
output cpuCluster string = cpuCluster.name
output datastore string = datastore.name
output codeAsset string = code.name

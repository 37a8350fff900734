// The data storage account: the containers uploads land in (one per trigger rule container)
// and 'artifacts' (the stage workers' outputs, the Azure ML datastore), 'locks' (the models'
// promotion leases), shared-key access off
// (every client uses its managed identity); an Event Grid system topic whose subscription sends
// each BlobCreated under a trigger rule's prefix to the Service Bus topic 'blob-events'.

param location string
param resourceToken string
param tags object

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
])
param skuName string

@description('Containers that uploads land in (the trigger rules\' containers).')
param dataContainers array

@description('Event Grid subject prefixes (/blobServices/default/containers/<c>/blobs/<prefix>) that start runs.')
param subjectPrefixes array

@description('Principal id of each identity, by name.')
param principalIds object

@description('Resource id of the user-assigned identity Event Grid delivers and dead-letters as.')
param eventGridIdentityId string

@description('Resource id of the Service Bus topic blob-events.')
param blobEventsTopicId string

var roles = loadJsonContent('../roles.json')
var artifactsContainer = 'artifacts'
var deadLetterContainer = 'eventgrid-deadletter'
// The blobs whose leases serialise each model's promotion (shared/promotion.py).
var locksContainer = 'locks'
// Who changes a model's champion under its promotion lease: the tag worker, and the
// coordinator (an operator's promote or rollback through the API).
var promoters = [
  'tag'
  'coordinator'
]
// Who reads uploads: the coordinator (a run's data must hold blobs) and aggregation (reads them).
var dataReaders = [
  'coordinator'
  'aggregation'
]
// Who reads and writes stage outputs: every worker, and the Azure ML clusters' jobs.
var artifactWriters = [
  'aggregation'
  'split'
  'train'
  'register'
  'tag'
  'amlcompute'
]
var dataReaderAssignments = [for pair in range(0, length(dataContainers) * length(dataReaders)): {
  container: dataContainers[pair / length(dataReaders)]
  principal: dataReaders[pair % length(dataReaders)]
}]

resource account 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = [for name in union(dataContainers, [artifactsContainer, deadLetterContainer, locksContainer]): {
  parent: blobService
  name: name
  properties: {
    publicAccess: 'None'
  }
}]

resource dataContainerRefs 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = [for assignment in dataReaderAssignments: {
  name: '${account.name}/default/${assignment.container}'
}]

resource dataReaderRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (assignment, i) in dataReaderAssignments: {
  name: guid(account.id, assignment.container, assignment.principal, roles.storageBlobDataReader)
  scope: dataContainerRefs[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: principalIds[assignment.principal]
    principalType: 'ServicePrincipal'
    description: '${assignment.principal} reads ${assignment.container}'
  }
  dependsOn: [
    containers
  ]
}]

resource artifacts 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  name: '${account.name}/default/${artifactsContainer}'
}

resource artifactWriterRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for writer in artifactWriters: {
  name: guid(account.id, artifactsContainer, writer, roles.storageBlobDataContributor)
  scope: artifacts
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalIds[writer]
    principalType: 'ServicePrincipal'
    description: '${writer} reads and writes stage outputs'
  }
  dependsOn: [
    containers
  ]
}]

resource locks 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  name: '${account.name}/default/${locksContainer}'
}

resource promoterRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for promoter in promoters: {
  name: guid(account.id, locksContainer, promoter, roles.storageBlobDataContributor)
  scope: locks
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalIds[promoter]
    principalType: 'ServicePrincipal'
    description: '${promoter} leases a model\'s lock blob while it changes the champion'
  }
  dependsOn: [
    containers
  ]
}]

resource deadLetters 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' existing = {
  name: '${account.name}/default/${deadLetterContainer}'
}

resource deadLetterWriterRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, deadLetterContainer, 'eventgrid', roles.storageBlobDataContributor)
  scope: deadLetters
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: principalIds.eventgrid
    principalType: 'ServicePrincipal'
    description: 'Event Grid dead-letters undeliverable blob events'
  }
  dependsOn: [
    containers
  ]
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgt-${account.name}'
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${eventGridIdentityId}': {}
    }
  }
  properties: {
    source: account.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// Event Grid schema, one event per message: what the coordinator's blob-events consumer reads.
resource blobCreated 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'blob-created-to-servicebus'
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
          resourceId: blobEventsTopicId
        }
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      advancedFilters: [
        {
          operatorType: 'StringBeginsWith'
          key: 'subject'
          values: subjectPrefixes
        }
      ]
    }
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'UserAssigned'
        userAssignedIdentity: eventGridIdentityId
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: account.id
          blobContainerName: deadLetterContainer
        }
      }
    }
  }
  dependsOn: [
    deadLetterWriterRole
  ]
}

output name string = account.name
output id string = account.id
output blobEndpoint string = account.properties.primaryEndpoints.blob
output artifactsContainer string = artifactsContainer

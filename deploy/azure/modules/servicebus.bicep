// The Service Bus namespace with every topic and subscription of shared/topology.py, and the
// least-privilege data roles: Sender on each topic a service publishes to, Receiver on each
// subscription it consumes, scoped to that one entity. Entities and roles come from
// generated/servicebus.json (python deploy/azure/generate.py), so they follow the code.
// Local (SAS) authentication is off: every client uses its managed identity.

param location string
param resourceToken string
param tags object

@description('Principal id of each service identity, by service name (and eventgrid, scaler).')
param principalIds object

var topology = loadJsonContent('../generated/servicebus.json')
var roles = loadJsonContent('../roles.json')

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: 'sb-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource topics 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = [for topic in topology.topics: {
  parent: namespace
  name: topic.name
  properties: {
    requiresDuplicateDetection: topic.requiresDuplicateDetection
    duplicateDetectionHistoryTimeWindow: topic.duplicateDetectionHistoryTimeWindow
    defaultMessageTimeToLive: topic.defaultMessageTimeToLive
    enableBatchedOperations: true
  }
}]

resource subscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = [for sub in topology.subscriptions: {
  name: '${namespace.name}/${sub.topic}/${sub.name}'
  properties: {
    lockDuration: sub.lockDuration
    maxDeliveryCount: sub.maxDeliveryCount
    deadLetteringOnMessageExpiration: sub.deadLetteringOnMessageExpiration
    defaultMessageTimeToLive: sub.defaultMessageTimeToLive
    requiresSession: false
    enableBatchedOperations: true
  }
  dependsOn: [
    topics
  ]
}]

resource senderTopics 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' existing = [for sender in topology.senders: {
  name: '${namespace.name}/${sender.topic}'
}]

resource senderRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (sender, i) in topology.senders: {
  name: guid(namespace.id, sender.topic, sender.sender, roles.serviceBusDataSender)
  scope: senderTopics[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataSender)
    principalId: principalIds[sender.sender]
    principalType: 'ServicePrincipal'
    description: '${sender.sender} sends to ${sender.topic}'
  }
  dependsOn: [
    topics
  ]
}]

resource receiverSubscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' existing = [for sub in topology.subscriptions: {
  name: '${namespace.name}/${sub.topic}/${sub.name}'
}]

resource receiverRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (sub, i) in topology.subscriptions: {
  name: guid(namespace.id, sub.topic, sub.name, sub.receiver, roles.serviceBusDataReceiver)
  scope: receiverSubscriptions[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataReceiver)
    principalId: principalIds[sub.receiver]
    principalType: 'ServicePrincipal'
    description: '${sub.receiver} receives from ${sub.topic}/${sub.name}'
  }
  dependsOn: [
    subscriptions
  ]
}]

// KEDA's azure-servicebus scaler reads a subscription's message count through the management
// endpoint, which takes Manage (Data Owner); it gets it on each worker's subscriptions only,
// as an identity no container runs with.
resource scaledSubscriptions 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' existing = [for sub in topology.scaledSubscriptions: {
  name: '${namespace.name}/${sub.topic}/${sub.name}'
}]

resource scalerRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (sub, i) in topology.scaledSubscriptions: {
  name: guid(namespace.id, sub.topic, sub.name, 'scaler', roles.serviceBusDataOwner)
  scope: scaledSubscriptions[i]
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.serviceBusDataOwner)
    principalId: principalIds.scaler
    principalType: 'ServicePrincipal'
    description: 'KEDA scales ${sub.receiver} on ${sub.topic}/${sub.name}'
  }
  dependsOn: [
    subscriptions
  ]
}]

output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output id string = namespace.id
output blobEventsTopicId string = resourceId('Microsoft.ServiceBus/namespaces/topics', namespace.name, 'blob-events')
output computeEventsTopicId string = resourceId('Microsoft.ServiceBus/namespaces/topics', namespace.name, 'compute-events')
output lockDurationSeconds int = topology.subscriptions[0].lockDurationSeconds

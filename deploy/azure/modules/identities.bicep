// One user-assigned managed identity per service, so each gets only its own roles; plus the
// identities of Event Grid's deliveries, of the KEDA scalers and of the Azure ML clusters.

param location string
param resourceToken string
param tags object

resource coordinatorIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-coordinator-${resourceToken}'
  location: location
  tags: tags
}

resource aggregationIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-aggregation-${resourceToken}'
  location: location
  tags: tags
}

resource splitIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-split-${resourceToken}'
  location: location
  tags: tags
}

resource trainIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-train-${resourceToken}'
  location: location
  tags: tags
}

resource registerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-register-${resourceToken}'
  location: location
  tags: tags
}

resource tagIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-tag-${resourceToken}'
  location: location
  tags: tags
}

// Event Grid system topics deliver to Service Bus (and dead-letter to a blob container) as this.
resource eventgridIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-eventgrid-${resourceToken}'
  location: location
  tags: tags
}

// KEDA reads the worker subscriptions' message counts as this: it needs Manage on them, which
// the workers' own identities do not get.
resource scalerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-scaler-${resourceToken}'
  location: location
  tags: tags
}

// Azure ML compute clusters read the split and write the model as this.
resource amlcomputeIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-amlcompute-${resourceToken}'
  location: location
  tags: tags
}

output principalIds object = {
  coordinator: coordinatorIdentity.properties.principalId
  aggregation: aggregationIdentity.properties.principalId
  split: splitIdentity.properties.principalId
  train: trainIdentity.properties.principalId
  register: registerIdentity.properties.principalId
  tag: tagIdentity.properties.principalId
  eventgrid: eventgridIdentity.properties.principalId
  scaler: scalerIdentity.properties.principalId
  amlcompute: amlcomputeIdentity.properties.principalId
}

output clientIds object = {
  coordinator: coordinatorIdentity.properties.clientId
  aggregation: aggregationIdentity.properties.clientId
  split: splitIdentity.properties.clientId
  train: trainIdentity.properties.clientId
  register: registerIdentity.properties.clientId
  tag: tagIdentity.properties.clientId
}

output resourceIds object = {
  coordinator: coordinatorIdentity.id
  aggregation: aggregationIdentity.id
  split: splitIdentity.id
  train: trainIdentity.id
  register: registerIdentity.id
  tag: tagIdentity.id
  eventgrid: eventgridIdentity.id
  scaler: scalerIdentity.id
  amlcompute: amlcomputeIdentity.id
}

output names object = {
  coordinator: coordinatorIdentity.name
}

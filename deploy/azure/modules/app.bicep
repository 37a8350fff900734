// One Container App: a service's image, run as its own user-assigned identity (AZURE_CLIENT_ID
// tells DefaultAzureCredential which), its settings as environment variables and its secrets as
// Key Vault references (nothing secret in the app's configuration), health probes, and scaling.

param name string
param location string
param tags object
param environmentId string
param registryServer string
param image string

@description('Resource id and client id of the service\'s identity.')
param identityId string
param clientId string

@description('The KEDA scaler\'s identity, which the app holds without running as it; empty for none.')
param scalerIdentityId string

@description('Environment variables: [{name, value}] or [{name, secretRef}].')
param env array

@description('Key Vault secrets the app references: [{name, secret}] (secret: the vault\'s secret name).')
param secrets array
param keyVaultUri string

@description('HTTP port of the service\'s health (and API) endpoint.')
param port int
param externalIngress bool
param livenessPath string
param readinessPath string

param cpu string
param memory string
param minReplicas int
param maxReplicas int
param scaleRules array

var identities = empty(scalerIdentityId) ? {
  '${identityId}': {}
} : {
  '${identityId}': {}
  '${scalerIdentityId}': {}
}

var secretRefs = [for secret in secrets: {
  name: secret.name
  keyVaultUrl: '${keyVaultUri}secrets/${secret.secret}'
  identity: identityId
}]

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': name
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: identities
  }
  properties: {
    environmentId: environmentId
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: externalIngress ? {
        external: true
        targetPort: port
        transport: 'auto'
        allowInsecure: false
      } : null
      registries: [
        {
          server: registryServer
          identity: identityId
        }
      ]
      secrets: secretRefs
    }
    template: {
      containers: [
        {
          name: name
          image: image
          env: concat(env, [
            {
              name: 'AZURE_CLIENT_ID'
              value: clientId
            }
          ])
          resources: {
            cpu: json(cpu)
            memory: memory
          }
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: livenessPath
                port: port
              }
              periodSeconds: 5
              failureThreshold: 60
            }
            {
              type: 'Liveness'
              httpGet: {
                path: livenessPath
                port: port
              }
              periodSeconds: 15
              failureThreshold: 4
            }
            {
              type: 'Readiness'
              httpGet: {
                path: readinessPath
                port: port
              }
              periodSeconds: 10
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: scaleRules
      }
    }
  }
}

output name string = app.name
output fqdn string = externalIngress ? app.properties.configuration.ingress.fqdn : ''

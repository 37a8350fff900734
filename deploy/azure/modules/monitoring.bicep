// Log Analytics, workspace-based Application Insights (local auth off: the services send
// telemetry with their managed identities, as Monitoring Metrics Publisher), the retrainer
// workbook, and the alert rules: a run failed, a message was dead-lettered, a stage missed its
// deadline, no run of a recipe succeeded for staleAfterDays days.
//
// The KQL names spans, events, metrics and custom dimensions by string:
// tests/unit/test_azure_templates.py checks them against shared/telemetry.py, as
// tests/unit/test_workbook.py does for the workbook.

param location string
param resourceToken string
param tags object

@description('Principal id of each service identity, by service name.')
param principalIds object

@description('Resource id of the Service Bus namespace (dead-letter alert).')
param serviceBusNamespaceId string

@description('E-mail address the alerts notify; empty for no notification (alerts still fire in the portal).')
param alertEmail string

@minValue(1)
@description('Alert when no run of a recipe has succeeded for this many days.')
param staleAfterDays int

var roles = loadJsonContent('../roles.json')
var services = [
  'coordinator'
  'aggregation'
  'split'
  'train'
  'register'
  'tag'
]

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

resource publisherRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for service in services: {
  name: guid(appInsights.id, service, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: principalIds[service]
    principalType: 'ServicePrincipal'
    description: '${service} sends telemetry'
  }
}]

module workbook '../../appinsights/workbook.bicep' = {
  name: 'workbook'
  params: {
    appInsightsId: appInsights.id
    location: location
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'retrainer'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroups = empty(alertEmail) ? [] : [
  actionGroup.id
]

resource runFailed 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-run-failed-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'retrainer: a run failed'
    description: 'A RunFailed event: the run\'s stage and error are in its customDimensions; GET /runs/{id} has the details.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: 'customEvents\n| where name == "RunFailed"\n| extend recipe = tostring(customDimensions["retrainer.recipe"]), stage = tostring(customDimensions["retrainer.stage_name"])\n| project timestamp, recipe, stage, operation_Id'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'recipe'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource stageOverDeadline 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-stage-deadline-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'retrainer: a stage missed its deadline'
    description: 'The coordinator\'s watchdog gave up on a stage attempt that did not start or finish in time (it retries or fails the run); a queued attempt whose workers are busy with a backlog, or that has no live worker, is postponed, not given up.'
    severity: 2
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: 'requests\n| where name == "retrainer.coordinator"\n| where tostring(customDimensions["retrainer.input"]) == "deadline_expired"\n| where tostring(customDimensions["retrainer.outcome"]) != "postponed"\n| extend stage = tostring(customDimensions["retrainer.stage_name"])\n| project timestamp, stage, operation_Id'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'stage'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: actionGroups
    }
  }
}

// A log alert looks back at most two days, so the age comes from the coordinator: a gauge of the
// time since each recipe's last successful run, read from the run store.
resource noRecentSuccess 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-no-success-${resourceToken}'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'retrainer: no successful run for ${staleAfterDays} days'
    description: 'No run of a model (a recipe, or one entity of it) has succeeded for ${staleAfterDays} days: data stopped arriving, or every run fails.'
    severity: 3
    enabled: true
    scopes: [
      appInsights.id
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    criteria: {
      allOf: [
        {
          query: 'customMetrics\n| where name == "retrainer.run.since_last_success"\n| extend recipe = tostring(customDimensions["retrainer.recipe"]), entity = tostring(customDimensions["retrainer.entity"])\n| summarize days = max(valueMax) / 86400.0 by recipe, entity\n| where days > ${staleAfterDays}'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'recipe'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'entity'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroups
    }
  }
}

resource deadLettered 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: 'alert-dead-lettered-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    description: 'A Service Bus subscription holds dead-lettered messages (MalformedMessage, MaxDeliveryCountExceeded, ...): inspect its dead-letter queue.'
    severity: 2
    enabled: true
    scopes: [
      serviceBusNamespaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'dead-lettered'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    autoMitigate: true
    actions: [for id in actionGroups: {
      actionGroupId: id
    }]
  }
}

output appInsightsId string = appInsights.id
output appInsightsConnectionString string = appInsights.properties.ConnectionString
output logAnalyticsId string = logAnalytics.id

// The retrainer workbook (workbook.json) as a shared Azure Monitor workbook, attached to the
// Application Insights component the services send their telemetry to.
//
//   az deployment group create -g <rg> -f deploy/appinsights/workbook.bicep \
//     -p appInsightsId=$(az monitor app-insights component show -g <rg> -a <name> --query id -o tsv)
//
// Redeploying updates the same workbook: its name is a GUID derived from the resource group and
// the display name.

@description('Resource id of the Application Insights component (microsoft.insights/components).')
param appInsightsId string

@description('Where the workbook resource lives.')
param location string = resourceGroup().location

@description('The name shown in the workbook gallery.')
param displayName string = 'retrainer'

@description('The workbook resource name; must be a GUID.')
param workbookId string = guid(resourceGroup().id, 'retrainer-workbook', displayName)

// The template opens on the component it is attached to.
var template = loadJsonContent('workbook.json')
var serializedData = string(union(template, { fallbackResourceIds: [ appInsightsId ] }))

resource workbook 'Microsoft.Insights/workbooks@2022-04-01' = {
  name: workbookId
  location: location
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: appInsightsId
    serializedData: serializedData
    version: 'Notebook/1.0'
  }
}

output workbookResourceId string = workbook.id

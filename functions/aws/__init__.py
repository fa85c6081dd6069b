"""The AWS Lambda entry point (`functions.aws.main.handler`) and its boto3 adapters."""

"""The AWS Lambda entry point (`functions.aws.handler.handler`) and its boto3 adapters."""

"""The stack outputs' names, written once: the components export them, `imagepipe dev`
writes them to its outputs file, and the clients (`imagepipe upload`, `status`) read them.

The same name for the same thing on both clouds; where the platforms differ, AWS has a
table and a dead-letter queue and GCP a Firestore collection.
"""

from __future__ import annotations

UPLOADS_BUCKET = "uploadsBucket"
UPLOADS_PREFIX = "uploadsPrefix"
RENDITIONS_BUCKET = "renditionsBucket"
CDN_URL = "cdnUrl"
EVENTS_TOPIC = "eventsTopic"
FUNCTION_NAME = "functionName"
API_URL = "apiUrl"  # with imagepipe:api true: the upload API's base URL
RECORDS_TABLE = "recordsTable"  # AWS: the DynamoDB table
DEAD_LETTER_QUEUE = "deadLetterQueue"  # AWS: the SQS queue of events that ran out of retries
RECORDS_COLLECTION = "recordsCollection"  # GCP: the Firestore collection

SHARED = (UPLOADS_BUCKET, UPLOADS_PREFIX, RENDITIONS_BUCKET, CDN_URL, EVENTS_TOPIC, FUNCTION_NAME)
AWS = (*SHARED, RECORDS_TABLE, DEAD_LETTER_QUEUE)
GCP = (*SHARED, RECORDS_COLLECTION)
# Exported on both clouds besides the above, only with imagepipe:api true.
WITH_API = (API_URL,)

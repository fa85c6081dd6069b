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
# The function's PipelineSettings as JSON (`PipelineSettings.to_json`): what `backfill
# --stale` compares each record's renditions with.
SETTINGS = "settings"
API_URL = "apiUrl"  # with imagepipe:api true: the upload API's base URL
RECORDS_TABLE = "recordsTable"  # AWS: the DynamoDB table
DEAD_LETTER_QUEUE = "deadLetterQueue"  # AWS: the SQS queue of events that ran out of retries
RECORDS_COLLECTION = "recordsCollection"  # GCP: the Firestore collection
# Operations: the work queue backfill and redrive enqueue to (AWS: the SQS queue's URL; GCP:
# the Cloud Tasks queue's name, projects/<p>/locations/<l>/queues/<q>), and on GCP what its
# tasks call (the function's URL) as whom (the service account their OIDC token names).
WORK_QUEUE = "workQueue"
WORK_DEAD_LETTER_QUEUE = "workDeadLetterQueue"  # AWS: what the work queue ran out of retries on
WORK_URL = "workUrl"  # GCP
WORK_INVOKER = "workInvoker"  # GCP
ARCHIVE_BUCKET = "archiveBucket"  # with imagepipe:originals archive

SHARED = (
    UPLOADS_BUCKET,
    UPLOADS_PREFIX,
    RENDITIONS_BUCKET,
    CDN_URL,
    EVENTS_TOPIC,
    FUNCTION_NAME,
    SETTINGS,
)
AWS = (*SHARED, RECORDS_TABLE, DEAD_LETTER_QUEUE, WORK_QUEUE, WORK_DEAD_LETTER_QUEUE)
GCP = (*SHARED, RECORDS_COLLECTION, WORK_QUEUE, WORK_URL, WORK_INVOKER)
# Exported on both clouds besides the above, only with imagepipe:api true.
WITH_API = (API_URL,)
WITH_ARCHIVE = (ARCHIVE_BUCKET,)  # only with imagepipe:originals archive

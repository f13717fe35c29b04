/*
 * A KCL MultiLang consumer for Node.js written against aws-kcl's public API (npm aws-kcl
 * 2.3.2), the way the upstream sample (samples/basic_sample/consumer/sample_kcl_app.js in
 * awslabs/amazon-kinesis-client-nodejs, not in the npm tarball) does: a record processor
 * object with initialize / processRecords / leaseLost / shardEnded / shutdownRequested, each
 * calling its completeCallback, checkpointing the last sequence number of each batch.
 *
 * It logs with console.log, on stdout, which is also the MultiLang protocol's channel: the
 * bridge must skip those lines (and log them), as KCL's daemon does.
 */
'use strict';

var kcl = require('aws-kcl');

function recordProcessor() {
  var shardId;
  return {
    initialize: function(initializeInput, completeCallback) {
      shardId = initializeInput.shardId;
      console.log('initialize ' + shardId + ' at ' + initializeInput.sequenceNumber);
      completeCallback();
    },

    processRecords: function(processRecordsInput, completeCallback) {
      if (!processRecordsInput || !processRecordsInput.records) {
        completeCallback();
        return;
      }
      var records = processRecordsInput.records;
      var sequenceNumber;
      for (var i = 0; i < records.length; ++i) {
        var record = records[i];
        var data = Buffer.from(record.data, 'base64').toString();
        sequenceNumber = record.sequenceNumber;
        console.log('Record (Partition Key: ' + record.partitionKey + ', Sequence Number: ' +
          sequenceNumber + ', Data: ' + data + ')');
      }
      if (!sequenceNumber) {
        completeCallback();
        return;
      }
      processRecordsInput.checkpointer.checkpoint(sequenceNumber, function(err) {
        if (err) {
          console.log('checkpoint failed: ' + err);
        }
        completeCallback();
      });
    },

    leaseLost: function(leaseLostInput, completeCallback) {
      console.log('lease lost ' + shardId);
      completeCallback();
    },

    shardEnded: function(shardEndedInput, completeCallback) {
      shardEndedInput.checkpointer.checkpoint(function(err) {
        console.log('shard ended ' + shardId + (err ? ': ' + err : ''));
        completeCallback();
      });
    },

    shutdownRequested: function(shutdownRequestedInput, completeCallback) {
      shutdownRequestedInput.checkpointer.checkpoint(function(err) {
        console.log('shutdown requested ' + shardId + (err ? ': ' + err : ''));
        completeCallback();
      });
    }
  };
}

kcl(recordProcessor()).run();

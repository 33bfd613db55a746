-- No ARGV. A cancelled run whose discovery did not end (cancelled by a
-- scheduler older than end_discovery, or a cancel whose script ran before
-- this one existed) ends it now; any other run is left as it is. Returns 1
-- if the run is cancelled.
if redis.call('HGET', run, F.state) ~= STATE.Cancelled then return 0 end
end_discovery()
return 1

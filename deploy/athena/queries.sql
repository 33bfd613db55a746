-- Non-compliant instances by account, in one nightly scan run (`flotilla run
-- list --campaign patch-scan-nightly --format json` names the runs).
SELECT account,
       count(DISTINCT instance_id) AS non_compliant,
       sum(compliance.critical_non_compliant) AS critical_missing,
       sum(compliance.security_non_compliant) AS security_missing
FROM flotilla_results
WHERE run = '6f1c2d3e-1a2b-4c5d-8e9f-0a1b2c3d4e5f'
  AND compliance.missing + compliance.failed + compliance.installed_pending_reboot > 0
GROUP BY account
ORDER BY non_compliant DESC;

-- Failure rate by campaign over every run: what spent the error budget
-- (Failed, Execution Timed Out) among all results.
SELECT campaign,
       count(*) AS results,
       count_if(status_detail IN ('Failed', 'Execution Timed Out')) AS failures,
       round(count_if(status_detail IN ('Failed', 'Execution Timed Out')) * 100.0 / count(*), 2) AS failure_percent
FROM flotilla_results
GROUP BY campaign
ORDER BY failure_percent DESC;

//! Accounts of organizational units, through AWS Organizations (called with the
//! scheduler's own identity, which must be the management account or a
//! delegated administrator).

use std::collections::BTreeSet;

use aws_config::BehaviorVersion;
use aws_sdk_organizations::config::{Credentials, Region};
use aws_sdk_organizations::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_organizations::types::{AccountStatus, ChildType};

use crate::SchedulerError;

/// Where Organizations is and who the scheduler is there.
#[derive(Debug, Clone, Default)]
pub struct OrganizationsSettings {
    /// Instead of AWS (the simulator).
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// `None` uses the default credentials chain.
    pub credentials: Option<Credentials>,
}

fn aws_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &str,
    error: aws_sdk_organizations::error::SdkError<E>,
) -> SchedulerError {
    // Throttling, 5xx and network trouble pass; a denial, a missing OU or an
    // organization not in use stays until someone changes something.
    let retryable = match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = error.code().unwrap_or_default();
            status >= 500
                || status == 429
                || code.contains("Throttling")
                || code == "TooManyRequestsException"
                || code == "ServiceException"
                || code == "ConcurrentModificationException"
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        _ => false,
    };
    SchedulerError::Organizations {
        message: format!("{operation}: {}", DisplayErrorContext(&error)),
        retryable,
    }
}

#[derive(Clone)]
pub struct Organizations {
    client: aws_sdk_organizations::Client,
}

impl Organizations {
    pub async fn new(settings: &OrganizationsSettings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(Region::new(
            settings
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
        ));
        if let Some(endpoint_url) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint_url);
        }
        if let Some(credentials) = &settings.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        Self {
            client: aws_sdk_organizations::Client::new(&loader.load().await),
        }
    }

    /// Active accounts directly in `ou` and, with `include_children`, in every OU below it.
    pub async fn accounts_under(
        &self,
        ou: &str,
        include_children: bool,
    ) -> Result<Vec<String>, SchedulerError> {
        let mut accounts = BTreeSet::new();
        let mut parents = vec![ou.to_string()];
        while let Some(parent) = parents.pop() {
            let mut next_token = None;
            loop {
                let page = self
                    .client
                    .list_accounts_for_parent()
                    .parent_id(&parent)
                    .set_next_token(next_token)
                    .send()
                    .await
                    .map_err(|error| aws_error("ListAccountsForParent", error))?;
                for account in page.accounts() {
                    let active = account
                        .status()
                        .is_none_or(|status| *status == AccountStatus::Active);
                    if let (true, Some(id)) = (active, account.id()) {
                        accounts.insert(id.to_string());
                    }
                }
                next_token = page.next_token().map(str::to_string);
                if next_token.is_none() {
                    break;
                }
            }
            if !include_children {
                continue;
            }
            let mut next_token = None;
            loop {
                let page = self
                    .client
                    .list_children()
                    .parent_id(&parent)
                    .child_type(ChildType::OrganizationalUnit)
                    .set_next_token(next_token)
                    .send()
                    .await
                    .map_err(|error| aws_error("ListChildren", error))?;
                parents.extend(
                    page.children()
                        .iter()
                        .filter_map(|child| child.id().map(str::to_string)),
                );
                next_token = page.next_token().map(str::to_string);
                if next_token.is_none() {
                    break;
                }
            }
        }
        Ok(accounts.into_iter().collect())
    }
}

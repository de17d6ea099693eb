//! The cluster as the task logic sees it: one narrow [`Cluster`] trait over what a node
//! reads from and writes to etcd (task statuses, endpoints, the desired tasks). [`Store`]
//! is the real one; [`Recorder`] keeps everything in memory for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rctl_api::{codec, keys, pb};

use crate::store::{Store, StoreError};

/// What a node's task logic reads from and writes to the cluster.
#[tonic::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's name.
    fn node(&self) -> &str;
    /// Writes the status of a task on this node.
    async fn put_status(&self, status: &pb::TaskStatus) -> Result<(), StoreError>;
    /// Deletes the status of task `task_id` on this node.
    async fn delete_status(&self, task_id: &str) -> Result<(), StoreError>;
    /// Publishes a healthy endpoint, under this node's lease.
    async fn put_endpoint(&self, ep: &pb::Endpoint) -> Result<(), StoreError>;
    /// Withdraws the endpoint of `task_id` of `service`.
    async fn delete_endpoint(&self, service: &str, task_id: &str) -> Result<(), StoreError>;
    /// Forgets a removed one-off container (`--rm`): its keys and its status.
    async fn delete_container(&self, task: &pb::Task) -> Result<(), StoreError>;
    /// The desired tasks and one-off containers, for the orphan sweep: every one (all
    /// nodes), or at least every one placed on this node (a task placed elsewhere is
    /// swept as one that is gone). Shared, as hollow nodes answer it from one read.
    async fn desired(&self) -> Result<Arc<[pb::Task]>, StoreError>;
    /// Ids of the task statuses this node has written.
    async fn status_ids(&self) -> Result<Vec<String>, StoreError>;
}

#[tonic::async_trait]
impl Cluster for Store {
    fn node(&self) -> &str {
        Store::node(self)
    }

    async fn put_status(&self, status: &pb::TaskStatus) -> Result<(), StoreError> {
        Store::put_status(self, status).await
    }

    async fn delete_status(&self, task_id: &str) -> Result<(), StoreError> {
        Store::delete_status(self, task_id).await
    }

    async fn put_endpoint(&self, ep: &pb::Endpoint) -> Result<(), StoreError> {
        let key = keys::endpoint(&ep.service, &ep.task_id);
        self.put_leased(key, codec::encode(ep)).await
    }

    async fn delete_endpoint(&self, service: &str, task_id: &str) -> Result<(), StoreError> {
        self.delete_leased(&keys::endpoint(service, task_id)).await
    }

    async fn delete_container(&self, task: &pb::Task) -> Result<(), StoreError> {
        Store::delete_container(self, task).await
    }

    async fn desired(&self) -> Result<Arc<[pb::Task]>, StoreError> {
        let mut tasks = self.tasks().await?;
        tasks.extend(self.containers().await?);
        Ok(tasks.into())
    }

    async fn status_ids(&self) -> Result<Vec<String>, StoreError> {
        Store::status_ids(self).await
    }
}

/// A cluster in memory: the statuses as written, in order, and the endpoints now.
#[derive(Debug, Default)]
pub struct Recorder {
    node: String,
    /// Every status written, in order.
    pub statuses: Mutex<Vec<pb::TaskStatus>>,
    /// Endpoints published now, by task id.
    pub endpoints: Mutex<HashMap<String, pb::Endpoint>>,
    /// Task ids whose status or container keys were deleted.
    pub forgotten: Mutex<Vec<String>>,
    /// What [`Cluster::desired`] answers.
    pub desired: Mutex<Vec<pb::Task>>,
}

impl Recorder {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            ..Default::default()
        }
    }

    /// The statuses written for `task_id`, in order.
    pub fn statuses_of(&self, task_id: &str) -> Vec<pb::TaskStatus> {
        lock(&self.statuses)
            .iter()
            .filter(|s| s.task_id == task_id)
            .cloned()
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[tonic::async_trait]
impl Cluster for Recorder {
    fn node(&self) -> &str {
        &self.node
    }

    async fn put_status(&self, status: &pb::TaskStatus) -> Result<(), StoreError> {
        lock(&self.statuses).push(status.clone());
        Ok(())
    }

    async fn delete_status(&self, task_id: &str) -> Result<(), StoreError> {
        lock(&self.forgotten).push(task_id.to_string());
        Ok(())
    }

    async fn put_endpoint(&self, ep: &pb::Endpoint) -> Result<(), StoreError> {
        lock(&self.endpoints).insert(ep.task_id.clone(), ep.clone());
        Ok(())
    }

    async fn delete_endpoint(&self, _service: &str, task_id: &str) -> Result<(), StoreError> {
        lock(&self.endpoints).remove(task_id);
        Ok(())
    }

    async fn delete_container(&self, task: &pb::Task) -> Result<(), StoreError> {
        lock(&self.forgotten).push(task.id.clone());
        Ok(())
    }

    async fn desired(&self) -> Result<Arc<[pb::Task]>, StoreError> {
        Ok(lock(&self.desired).clone().into())
    }

    async fn status_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = lock(&self.statuses)
            .iter()
            .map(|s| s.task_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

-- MariaDB dump 10.19
SET NAMES utf8mb4;
DROP TABLE IF EXISTS `orders`;
CREATE TABLE `orders` (id INT PRIMARY KEY, item TEXT);
INSERT INTO `orders` VALUES (1,'coffee');
INSERT INTO `orders` VALUES (2,'tea\n');
INSERT INTO `orders` VALUES (3,'it''s );');
INSERT INTO `o``dd` VALUES (1,NULL);
INSERT INTO `orders` VALUES (4,'x');
UNLOCK TABLES;
